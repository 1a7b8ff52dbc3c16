"""System shared memory between a client and a Triton server on the same host (tritonclient's
`tritonclient.utils.shared_memory` regions, registered with the server once and reused).

Lifecycle. Every region this package creates is named
`boxinst_<pid>_<process start time>_<client>_<slot>_<role>_<generation>` (the same string is the
Triton region name and, with a leading '/', the POSIX shared-memory key, i.e. /dev/shm/<name>).
`close()` unregisters and unlinks them. A client process that is killed cannot do that, so every
client that opens shared memory first removes what dead owners left (`clean_stale`): the files in
/dev/shm and the registrations on its server whose <pid> no longer runs, or runs a process that
started at another time (a reused pid). Python's resource tracker also unlinks leftover files of a
killed process when it can, but it cannot unregister them from the server.

Layout of one request slot (a slot serves one request at a time; concurrent requests use
separate slots):
- `input`: the frame, uint8 [1, H, W, 3]; grown (a new region) when a larger frame comes;
- `output`: the fixed-size outputs at fixed offsets, sized for K = max_detections:
  num_instances INT32 [1, 1], image_size INT32 [1, 2], boxes FP32 [1, K, 4], scores FP32 [1, K],
  classes INT32 [1, K];
- `masks`: bitmap masks uint8 [1, N, H, W] (N <= K), created only when bitmaps are asked for.
`masks_rle` (BYTES) always comes back in the gRPC response: its size depends on the mask
outlines and has no useful bound, and it is small (hundreds of bytes per instance);
docs/deployment.md has the reasoning."""
from __future__ import annotations

import itertools
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

PREFIX = "boxinst"
SHM_DIR = Path("/dev/shm")
NAME_RE = re.compile(rf"^{PREFIX}_(\d+)_(\d+)_")
ALIGN = 64
IN_USE_WAIT_S = 5.0  # how long close() retries unregistering a region the server still holds
_client_ids = itertools.count()


def process_start_ticks(pid: int) -> int | None:
    """Start time of process `pid` (clock ticks since boot, /proc/PID/stat field 22), or None if
    there is no such process. Where /proc is missing, 0 for a live pid (existence only)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if not Path("/proc/self/stat").exists():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                return 0
            return 0
        return None
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: the fields after it follow the last ')'.
    return int(text[text.rindex(")") + 2:].split()[19])


_OWNER = f"{os.getpid()}_{process_start_ticks(os.getpid()) or 0}"


def owner_tag() -> str:
    """`<pid>_<start ticks>` of this process (recomputed after a fork)."""
    global _OWNER
    if not _OWNER.startswith(f"{os.getpid()}_"):
        _OWNER = f"{os.getpid()}_{process_start_ticks(os.getpid()) or 0}"
    return _OWNER


def is_stale(name: str) -> bool:
    """True for a region of this package whose owner process is gone."""
    m = NAME_RE.match(name)
    if m is None:
        return False
    pid, start = int(m.group(1)), int(m.group(2))
    ticks = process_start_ticks(pid)
    return ticks is None or (ticks != 0 and start != 0 and ticks != start)


def stale_files(shm_dir: Path = SHM_DIR) -> list[str]:
    """Names of this package's files in /dev/shm whose owner is gone."""
    try:
        return sorted(p.name for p in shm_dir.iterdir() if is_stale(p.name))
    except OSError:
        return []


def clean_stale(client: Any | None = None, shm_dir: Path = SHM_DIR, timeout_s: float | None = None) -> dict:
    """Unlink the dead owners' files in /dev/shm and, with a tritonclient gRPC `client`,
    unregister the dead owners' regions from its server. Returns {"unlinked": [...],
    "unregistered": [...]}."""
    unlinked = []
    for name in stale_files(shm_dir):
        try:
            # tritonclient can only unlink regions it created in this process: remove the file.
            (shm_dir / name).unlink()
            unlinked.append(name)
        except FileNotFoundError:
            pass
    unregistered = []
    if client is not None:
        for name in registered_regions(client, timeout_s):
            if is_stale(name):
                try:
                    client.unregister_system_shared_memory(name, client_timeout=timeout_s)
                    unregistered.append(name)
                except Exception:  # noqa: BLE001 - another client starting now may have removed it first
                    if name in registered_regions(client, timeout_s):
                        raise
    return {"unlinked": unlinked, "unregistered": unregistered}


def registered_regions(client: Any, timeout_s: float | None = None) -> list[str]:
    """Names of the system shared-memory regions the server has registered (all owners)."""
    status = client.get_system_shared_memory_status(as_json=True, client_timeout=timeout_s)
    return sorted((status or {}).get("regions", {}).keys())


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Region:
    """One registered region: `handle` from tritonclient, `name` (Triton) = key without '/'."""

    name: str
    byte_size: int
    handle: Any

    @classmethod
    def open(cls, client: Any, name: str, byte_size: int, timeout_s: float | None) -> "Region":
        import tritonclient.utils.shared_memory as shm

        handle = shm.create_shared_memory_region(name, "/" + name, byte_size, create_only=True)
        try:
            client.register_system_shared_memory(name, "/" + name, byte_size, client_timeout=timeout_s)
        except Exception:
            shm.destroy_shared_memory_region(handle)
            raise
        return cls(name, byte_size, handle)

    def register_again(self, client: Any, timeout_s: float | None) -> None:
        """Register the (still existing) segment with a server that lost it: a restarted one."""
        try:
            client.unregister_system_shared_memory(self.name, client_timeout=timeout_s)
        except Exception:  # noqa: BLE001 - nothing registered under that name: the usual case
            pass
        client.register_system_shared_memory(self.name, "/" + self.name, self.byte_size, client_timeout=timeout_s)

    def close(self, client: Any, timeout_s: float | None) -> None:
        """Unregister (best effort: the server may be gone) and unlink.

        Triton refuses to unregister a region that a request still holds ("... it is currently in
        use"), and it lets go of a request's regions a little after its response has left: a
        client closed right after its last answer meets that (seen with 1 in 3 clients here),
        so that refusal is retried for up to IN_USE_WAIT_S."""
        import tritonclient.utils.shared_memory as shm

        deadline = time.monotonic() + IN_USE_WAIT_S
        while True:
            try:
                client.unregister_system_shared_memory(self.name, client_timeout=timeout_s)
                break
            except Exception as e:  # noqa: BLE001 - a dead server has nothing registered any more
                if "in use" not in str(e) or time.monotonic() > deadline:
                    break
                time.sleep(0.005)
        shm.destroy_shared_memory_region(self.handle)

    def write(self, array: np.ndarray) -> None:
        import tritonclient.utils.shared_memory as shm

        shm.set_shared_memory_region(self.handle, [array])

    def read(self, dtype: Any, shape: list[int], offset: int = 0) -> np.ndarray:
        """A copy (the region is overwritten by the next request of its slot)."""
        import tritonclient.utils.shared_memory as shm

        return np.array(shm.get_contents_as_numpy(self.handle, dtype, shape, offset=offset))


def output_layout(max_detections: int) -> dict[str, tuple[int, int]]:
    """name -> (offset, byte size) of the fixed-size outputs in a slot's output region."""
    k = max_detections
    sizes = {"num_instances": 4, "image_size": 8, "boxes": 16 * k, "scores": 4 * k, "classes": 4 * k}
    layout, offset = {}, 0
    for name, size in sizes.items():
        layout[name] = (offset, size)
        offset += _aligned(size)
    return layout


class Slot:
    """The regions one in-flight request uses (see the module docstring)."""

    def __init__(self, pool: "ShmPool", index: int):
        self.pool, self.index = pool, index
        self.regions: dict[str, Region] = {}
        self._generation = itertools.count()
        layout = output_layout(pool.max_detections)
        self.layout = layout
        last = max(layout.values())
        self._ensure("output", last[0] + last[1])

    def _ensure(self, role: str, byte_size: int) -> Region:
        r = self.regions.get(role)
        if r is not None and r.byte_size >= byte_size:
            return r
        if r is not None:
            del self.regions[role]
            r.close(self.pool.client, self.pool.timeout_s)
        name = f"{PREFIX}_{owner_tag()}_{self.pool.client_id}_{self.index}_{role}_{next(self._generation)}"
        r = Region.open(self.pool.client, name, byte_size, self.pool.timeout_s)
        self.regions[role] = r
        return r

    def input_region(self, nbytes: int) -> Region:
        return self._ensure("input", nbytes)

    def masks_region(self, nbytes: int) -> Region:
        return self._ensure("masks", max(nbytes, 1))

    def close(self) -> None:
        for r in self.regions.values():
            r.close(self.pool.client, self.pool.timeout_s)
        self.regions.clear()


class ShmPool:
    """Request slots for one BoxInstClient: `with pool.slot() as s:` hands out a free slot,
    creating one (and registering its regions) only when all are busy."""

    def __init__(self, client: Any, max_detections: int, timeout_s: float | None = None):
        self.client, self.max_detections, self.timeout_s = client, int(max_detections), timeout_s
        self.client_id = next(_client_ids)
        self._free: list[Slot] = []
        self._all: list[Slot] = []
        self._indices = itertools.count()
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self) -> Slot:
        with self._lock:
            if self._closed:
                raise RuntimeError("the client's shared memory is closed")
            if self._free:
                return self._free.pop()
            index = next(self._indices)
        slot = Slot(self, index)  # registers its output region: outside the lock
        with self._lock:
            self._all.append(slot)
        return slot

    def release(self, slot: Slot) -> None:
        with self._lock:
            if not self._closed:
                self._free.append(slot)
                return
        slot.close()

    def slot(self) -> "_SlotContext":
        return _SlotContext(self)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(r.name for s in self._all for r in s.regions.values())

    def register_again(self) -> None:
        """Every region of every slot registered again (after a server restart forgot them)."""
        with self._lock:
            regions = [r for s in self._all for r in s.regions.values()]
        for r in regions:
            r.register_again(self.client, self.timeout_s)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            slots, self._all, self._free = self._all, [], []
        for s in slots:
            s.close()


class _SlotContext:
    def __init__(self, pool: ShmPool):
        self.pool = pool
        self.slot: Slot | None = None

    def __enter__(self) -> Slot:
        self.slot = self.pool.acquire()
        return self.slot

    def __exit__(self, *exc) -> None:
        self.pool.release(self.slot)


def make_finalizer(owner: Any, pool: ShmPool) -> Callable[[], None]:
    """weakref.finalize: the pool is closed when `owner` is garbage-collected or at interpreter
    exit, if close() was not called."""
    import weakref

    return weakref.finalize(owner, pool.close)
