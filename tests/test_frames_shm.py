"""Raw-frame checks and the shared-memory bookkeeping that needs no server (the server-side tests
are in tests/test_serving.py): which regions count as left by a dead client, and the layout of
the fixed-size outputs."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from boxinst_serve.protocol import check_frame
from boxinst_serve.client.shm import ALIGN, clean_stale, is_stale, output_layout, owner_tag, process_start_ticks


def test_check_frame_accepts_rgb_uint8_with_or_without_the_batch_dimension():
    f = np.zeros((4, 5, 3), np.uint8)
    assert check_frame(f) is f
    assert check_frame(f[None]).shape == (4, 5, 3)
    assert check_frame(f, max_pixels=20).shape == (4, 5, 3)


@pytest.mark.parametrize("frame, message", [
    (np.zeros((4, 5, 3), np.float32), "got dtype float32"),
    (np.zeros((4, 5, 3), np.uint16), "got dtype uint16"),
    (np.zeros((4, 5), np.uint8), "got 2 dimensions"),
    (np.zeros((4, 5, 4), np.uint8), "3 channels .* got 4"),
    (np.zeros((4, 0, 3), np.uint8), r"empty frame \(0x4 px\)"),
    (np.zeros((2, 4, 5, 3), np.uint8), "one frame per request, got a batch of 2"),
    (np.zeros((4, 6, 3), np.uint8), r"frame is 6x4 px, over the 2e-05 MP limit"),
    ([[1, 2, 3]], "must be a numpy array, got list"),
])
def test_check_frame_names_the_problem(frame, message):
    with pytest.raises(ValueError, match=message):
        check_frame(frame, max_pixels=20)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_regions_of_dead_or_reused_pids_are_stale_and_only_those():
    me = owner_tag()
    pid, start = (int(v) for v in me.split("_"))
    assert start == process_start_ticks(pid) and start > 0
    assert not is_stale(f"boxinst_{me}_0_0_input_0")
    assert is_stale(f"boxinst_{pid}_{start + 1}_0_0_input_0")  # same pid, another process: reused
    dead = _dead_pid()
    if process_start_ticks(dead) is None:  # (unless the pid was reused meanwhile)
        assert is_stale(f"boxinst_{dead}_{start}_0_0_output_0")
    assert not is_stale("boxinst_raw") and not is_stale("someone_else_123_456")


def test_clean_stale_unlinks_only_dead_owners_files(tmp_path):
    dead = _dead_pid()
    mine = tmp_path / f"boxinst_{owner_tag()}_0_0_input_0"
    left = tmp_path / f"boxinst_{dead}_1_0_0_input_0"
    other = tmp_path / "pulse-shm-123"
    for p in (mine, left, other):
        p.write_bytes(b"x")
    report = clean_stale(client=None, shm_dir=tmp_path)
    if process_start_ticks(dead) is None:
        assert report["unlinked"] == [left.name] and not left.exists()
    assert mine.exists() and other.exists()


def test_process_start_ticks_reads_past_a_command_name_with_spaces_and_parentheses(tmp_path):
    exe = tmp_path / "a) b (c"  # the kernel's comm field is the executable's name
    exe.symlink_to(sys.executable)
    p = subprocess.Popen([str(exe), "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert open(f"/proc/{p.pid}/stat").read().split(" ", 1)[1].startswith("(a) b (c)")
        ticks = process_start_ticks(p.pid)
        assert isinstance(ticks, int) and ticks >= process_start_ticks(os.getpid())
    finally:
        p.communicate(b"")


def test_fixed_output_layout_is_aligned_and_disjoint():
    layout = output_layout(100)
    spans = sorted(layout.values())
    assert [name for name in layout] == ["num_instances", "image_size", "boxes", "scores", "classes"]
    assert layout["boxes"][1] == 100 * 4 * 4 and layout["scores"][1] == 400
    for (o1, s1), (o2, _) in zip(spans, spans[1:]):
        assert o1 % ALIGN == 0 and o1 + s1 <= o2


class _FakeServer:
    """The two shared-memory calls of tritonclient's gRPC client that clean_stale uses."""

    def __init__(self, names, raced=()):
        self.names, self.raced = set(names), set(raced)

    def get_system_shared_memory_status(self, as_json=False, client_timeout=None):
        return {"regions": {n: {"name": n} for n in self.names}}

    def unregister_system_shared_memory(self, name="", client_timeout=None):
        self.names.discard(name)
        if name in self.raced:  # another client unregistered it just before us
            raise RuntimeError(f"Unable to find system shared memory region: '{name}'")


def test_clean_stale_unregisters_dead_owners_regions_and_tolerates_a_race(tmp_path):
    dead = _dead_pid()
    if process_start_ticks(dead) is not None:
        pytest.skip("the dead pid was reused")
    mine, gone, raced = (f"boxinst_{owner_tag()}_0_0_input_0", f"boxinst_{dead}_1_0_0_input_0",
                         f"boxinst_{dead}_1_0_0_output_0")
    server = _FakeServer([mine, gone, raced, "someone_else"], raced=[raced])
    report = clean_stale(server, shm_dir=tmp_path)
    assert report["unregistered"] == [gone]
    assert server.names == {mine, "someone_else"}


def test_closing_a_region_waits_until_the_server_lets_go_of_it(monkeypatch):
    """Triton answers "currently in use" to an unregister that comes right after the response of
    the last request that used the region; close() must retry, not leave it registered."""
    import tritonclient.utils.shared_memory as shm_utils

    from boxinst_serve.client.shm import Region

    class Server:
        def __init__(self, busy: int, error: str = "it is currently in use"):
            self.busy, self.error, self.calls, self.registered = busy, error, 0, True

        def unregister_system_shared_memory(self, name="", client_timeout=None):
            self.calls += 1
            if self.calls <= self.busy:
                raise RuntimeError(f"[StatusCode.INTERNAL] Cannot unregister shared memory region '{name}', "
                                   f"{self.error}.")
            self.registered = False

    destroyed = []
    monkeypatch.setattr(shm_utils, "destroy_shared_memory_region", destroyed.append)
    server = Server(busy=3)
    Region("boxinst_x", 64, "handle").close(server, timeout_s=1)
    assert not server.registered and server.calls == 4 and destroyed == ["handle"]
    gone = Server(busy=10**6, error="failed to connect to all addresses")  # a dead server: no retries
    Region("boxinst_y", 64, "handle2").close(gone, timeout_s=1)
    assert gone.calls == 1 and destroyed == ["handle", "handle2"]
