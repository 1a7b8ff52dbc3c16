"""`boxinst serve` heals itself (issue: supervision): a step process killed under load is brought
back, health says not ready meanwhile, stopping a server with a dead step is quick, nothing is
left in /dev/shm, and a dead tritonserver is restarted on the same ports. Against the real
tritonserver; every wait is bounded."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from servers import encode, repository_copy

pytest.importorskip("tritonclient.grpc")

from boxinst_serve.client import BoxInstClient  # noqa: E402
from boxinst_serve.protocol import RAW_MODEL  # noqa: E402
from boxinst_serve.serving.probe import SIDE, probe_http  # noqa: E402
from boxinst_serve.serving.server import ServerError, TritonServer, which_tritonserver  # noqa: E402
from boxinst_serve.serving.processes import server_stubs  # noqa: E402
from boxinst_serve.serving.supervisor import GaveUp, Supervisor, SupervisorSettings  # noqa: E402

pytestmark = pytest.mark.skipif(which_tritonserver() is None, reason="no tritonserver binary (nvidia-pytriton)")
SHM = Path("/dev/shm")
# Bounds, from the worst case measured on a 2-core AMD EPYC shared with other test runs and a
# training job, with two CPU-bound processes beside the tests (issue 27: tests that hold on a slower
# machine; docs/benchmarks.md measured 2.04 s for the first on a faster one):
LAST_FAILURE_S = 10.0  # boxinst_postprocess killed: the last request failed 3.03-3.21 s after the kill (3 runs)
STOP_S = 3.0 + 4.0  # stop() waits 3 s for a server with a dead step, then SIGKILLs: 3.02-3.07 s in all
# Deadlines of the waits below (polled, never slept): far over what they took, to fail, not hang.
WAIT_S = 120.0


def _wait_for(condition, what: str, timeout_s: float = WAIT_S) -> None:
    """Poll condition() every 0.1 s; fail naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.1)


def _recovered(supervisor: Supervisor) -> bool:
    return any(k == "recovered" for _, k, _ in supervisor.events)


@pytest.fixture(scope="module")
def repository(trained_lite, lite_onnx, tmp_path_factory) -> Path:
    from export.triton import write_triton_net

    root = tmp_path_factory.mktemp("supervised")
    repo = repository_copy(root / "model_repository")
    write_triton_net(trained_lite, repo, flavour="cpu", onnx_path=lite_onnx)  # the session's export, not another
    return repo


def _load(url: str, data: bytes, stop: threading.Event, log: list, lock: threading.Lock) -> None:
    with BoxInstClient(url, timeout_s=30, retry_s=0) as client:  # no retries: the outage itself is measured
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                client.segment(data)
                error = None
            except Exception as e:  # noqa: BLE001 - recorded and asserted on below
                error = str(e)
                time.sleep(0.05)
            with lock:
                log.append((t0, time.monotonic(), error))


def _health(url: str, stop: threading.Event, samples: list) -> None:
    """(time, True/False: what the ready endpoint answered, None: no answer in 5 s) every 0.1 s."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    while not stop.is_set():
        try:
            ready = client.is_server_ready(client_timeout=5)
        except InferenceServerException:  # a timeout or a refused connection: no answer, not "not ready"
            ready = None
        samples.append((time.monotonic(), ready))
        time.sleep(0.1)
    client.close()


def _regions_of(server: TritonServer) -> list[str]:
    return [s.shm_region for s in server_stubs(server.process.pid).values()]


def test_a_step_killed_under_load_comes_back_with_honest_health(repository):
    image = np.full((128, 160, 3), 40, np.uint8)
    image[30:90, 40:120] = (200, 60, 60)
    data = encode(image, ".png")
    server = TritonServer(repository, grpc_port=0, http_port=0, metrics_port=0)
    server.start(240)
    supervisor = Supervisor(server, SupervisorSettings(probe_s=2.0)).start()
    stop, lock, log, health = threading.Event(), threading.Lock(), [], []
    threads = [threading.Thread(target=_load, args=(server.grpc_url, data, stop, log, lock)) for _ in range(4)]
    threads.append(threading.Thread(target=_health, args=(server.grpc_url, stop, health)))

    def answered(after: float) -> int:
        with lock:
            return sum(1 for t0, _, e in log if t0 > after and e is None)

    try:
        for t in threads:
            t.start()
        _wait_for(lambda: answered(0.0) >= 8, "8 requests answered before the kill")
        stub = next(s for s in server_stubs(server.process.pid).values() if s.model == "boxinst_postprocess")
        killed, killed_wall = time.monotonic(), time.time()
        os.kill(stub.pid, signal.SIGKILL)
        _wait_for(lambda: _recovered(supervisor), "the supervisor's recovery")
        # its event's time on this clock (the events carry wall-clock time)
        recovered = killed + next(t for t, k, _ in supervisor.events if k == "recovered") - killed_wall
        _wait_for(lambda: answered(recovered) >= 8, "8 requests answered after the recovery")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=WAIT_S)
    try:
        assert not [t.name for t in threads if t.is_alive()], "a client thread did not finish"
        ended_before = [e for _, t1, e in log if t1 < killed]
        assert ended_before and not any(ended_before), "requests failed before the kill"
        failures = [(t0, t1, e) for t0, t1, e in log if e]
        assert failures, "no request failed: the kill did not hit the served path"
        started_after = [e for t0, _, e in log if t0 > recovered]
        assert len(started_after) >= 8 and not any(started_after), "requests failed after the recovery"
        recovered_s = max(t1 for _, t1, _ in failures) - killed
        assert recovered_s < LAST_FAILURE_S, f"requests failed for {recovered_s:.1f} s after the kill"
        answers = [(t, r) for t, r in health if r is not None]  # a sample without an answer says nothing
        assert all(r for t, r in answers if t < killed), "health said not ready before the kill"
        assert any(r is False for _, r in answers), "health said ready throughout the outage"
        assert answers[-1][1] is True, "health said not ready at the end"
        kinds = [k for _, k, _ in supervisor.events]
        assert "reload" in kinds and "recovered" in kinds and "restart" not in kinds, supervisor.events
        print(f"\nkilled boxinst_postprocess under load at concurrency 4: {len(failures)} of {len(log)} requests failed, "
              f"the last {recovered_s:.2f} s after the kill; recovered {recovered - killed:.2f} s after it; "
              f"{sum(r is None for _, r in health)} of {len(health)} health samples unanswered")
    finally:
        supervisor.stop()
        regions = _regions_of(server)
        t0 = time.monotonic()
        server.stop()
        stop_s = time.monotonic() - t0
    print(f"stop with a dead step: {stop_s:.2f} s")
    assert stop_s < STOP_S, f"stopping a server that lost a step took {stop_s:.1f} s"
    assert not [r for r in regions if (SHM / r).exists()], "the server left shared-memory regions"
    assert not [p.name for p in SHM.glob(f"boxinst_{os.getpid()}_*")], "a client left shared-memory regions"


def test_a_dead_tritonserver_is_restarted_on_the_same_ports(repository):
    server = TritonServer(repository, grpc_port=0, http_port=0, metrics_port=0)
    server.start(240)
    supervisor = Supervisor(server, SupervisorSettings(probe_s=0)).start()
    frame = np.full((64, 80, 3), 114, np.uint8)
    # Made before the restart: its shared-memory registrations and its choice of raw model die with the server.
    client = BoxInstClient(server.grpc_url, timeout_s=30, shared_memory=True)
    try:
        client.segment(frame)
        regions = _regions_of(server)
        ports = (server.grpc_port, server.http_port, server.metrics_port)
        os.killpg(server.process.pid, signal.SIGKILL)
        # the restart waits up to its own 120 s for the server to be ready: a longer deadline
        _wait_for(lambda: _recovered(supervisor), "the supervisor's restart", timeout_s=WAIT_S + 60)
        assert [k for _, k, _ in supervisor.events][-2:] == ["restart", "recovered"], supervisor.events
        assert (server.grpc_port, server.http_port, server.metrics_port) == ports
        assert not [r for r in regions if (SHM / r).exists()], "the killed server's step regions were left"
        assert client.is_ready()
        client.segment(frame)  # registers its regions again
        assert client.retried >= 1
        # The container's health check (no supervisor there): a tiny inference, not the ready endpoint,
        # answering what the model answers for its grey frame.
        with BoxInstClient(server.grpc_url, timeout_s=30, raw_model=RAW_MODEL) as raw:
            want = len(raw.segment(np.full((SIDE, SIDE, 3), 114, np.uint8)))
        assert probe_http(f"127.0.0.1:{server.http_port}", timeout_s=30) == want
        supervisor.stop()
        step = next(s for s in server_stubs(server.process.pid).values() if s.model == "boxinst_preprocess_raw")
        os.kill(step.pid, signal.SIGKILL)
        _wait_for(lambda: _probe_fails(server.http_port), "the probe failing once its step was killed")
        with pytest.raises(RuntimeError, match="not healthy"):
            probe_http(f"127.0.0.1:{server.http_port}", timeout_s=30)
    finally:
        client.close()
        supervisor.stop()
        server.stop()
    assert not [p.name for p in SHM.glob(f"boxinst_{os.getpid()}_*")], "a client left shared-memory regions"


def _probe_fails(http_port: int) -> bool:
    try:
        probe_http(f"127.0.0.1:{http_port}", timeout_s=30)
    except RuntimeError:
        return True
    return False


def test_video_over_the_server_loses_no_frame_when_a_step_is_killed(repository, tmp_path):
    import cv2

    from boxinst_serve.apps.video.pipeline import JSONL, client_batch_predictor, process_videos

    clip, n = tmp_path / "clip.mp4", 60
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 128))
    for i in range(n):
        frame = np.full((128, 160, 3), 30, np.uint8)
        cv2.rectangle(frame, (10 + i, 20), (70 + i, 90), (60, 200, 60), -1)
        writer.write(frame)
    writer.release()
    server = TritonServer(repository, grpc_port=0, http_port=0, metrics_port=0)
    server.start(240)
    supervisor = Supervisor(server, SupervisorSettings(probe_s=0)).start()
    client = BoxInstClient(server.grpc_url, timeout_s=30, max_workers=4)
    jsonl = tmp_path / "out" / "clip" / JSONL
    done = threading.Event()
    try:
        model = client.raw_model  # the step raw frames go to: the one to kill
        runner = threading.Thread(target=lambda: (process_videos(str(clip), tmp_path / "out",
                                                                 client_batch_predictor(client), batch_size=4,
                                                                 progress=False), done.set()))
        runner.start()
        # mid-clip: once the first batch is written
        _wait_for(lambda: (jsonl.is_file() and jsonl.stat().st_size > 0) or done.is_set(), "the first frames written")
        assert not done.is_set(), "the clip was done before the kill"
        stub = next(s for s in server_stubs(server.process.pid).values() if s.model == model)
        os.kill(stub.pid, signal.SIGKILL)
        runner.join(timeout=WAIT_S + 60)
        assert done.is_set(), "the video run did not finish"
    finally:
        client.close()
        supervisor.stop()
        server.stop()
    lines = jsonl.read_text().splitlines()
    import json

    frames = [json.loads(line)["frame"] for line in lines]
    assert frames == list(range(n)), "a frame was lost or written twice"
    assert client.retried >= 1, "the kill did not hit a request: the test proved nothing"


def test_a_port_taken_before_tritonserver_binds_it_is_chosen_again(repository, monkeypatch):
    """Ports of 0: a port that another process binds after it was chosen (here bound without
    listening, so that only tritonserver's own bind, after loading every model, sees it) is chosen
    again, and the server comes up on the others."""
    import boxinst_serve.serving.server as server_module

    choose, chosen = server_module.free_ports, []

    def first_grpc_port_taken(hosts):
        ports = choose(hosts)
        chosen.append(ports)
        return [taken, *ports[1:]] if len(chosen) == 1 else ports

    with socket.socket() as thief:
        thief.bind(("127.0.0.1", 0))
        taken = thief.getsockname()[1]
        monkeypatch.setattr(server_module, "free_ports", first_grpc_port_taken)
        server = TritonServer(repository, grpc_port=0, http_port=0, metrics_port=0)
        try:
            server.start(240)
            assert len(chosen) == 2 and server.grpc_port == chosen[1][0] != taken
            with BoxInstClient(server.grpc_url, timeout_s=30) as client:
                assert client.is_ready()
        finally:
            server.stop()


def test_ports_given_are_never_replaced(repository):
    """Only ports of 0 are chosen: a port given that is in use is refused, before starting anything."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        server = TritonServer(repository, grpc_port=other.getsockname()[1], http_port=0, metrics_port=0)
        with pytest.raises(ServerError, match=f"port {other.getsockname()[1]} on 127.0.0.1 is already in use"):
            server.start(30)
        assert server.process is None


class _Server:
    process = None


def test_the_supervisor_backs_off_and_gives_up_after_its_budget():
    sup = Supervisor(_Server(), SupervisorSettings(max_recoveries=2, window_s=60, backoff_s=(0.0, 0.01)))
    sup._backoff()
    sup._backoff()
    with pytest.raises(GaveUp, match="2 recoveries within 60 s"):
        sup._backoff()


def test_only_outages_are_retried_never_a_bad_input():
    from boxinst_serve.client.grpc_client import BoxInstError, BoxInstTimeout, is_transient

    down = ["in ensemble 'boxinst', Stub process 'boxinst_postprocess_0_0' is not healthy. (StatusCode.INTERNAL)",
            "failed to connect to all addresses (StatusCode.UNAVAILABLE)",
            # what a restarted server says of this client's region (measured): register again, retry
            "Unable to find shared memory region: 'boxinst_1_2_0_in' (StatusCode.NOT_FOUND)"]
    assert all(is_transient(BoxInstError(m)) for m in down)
    bad = ["boxinst_preprocess_raw: frames must be RGB uint8 [H, W, 3], got dtype float32 (StatusCode.INTERNAL)",
           "unexpected shape for input 'image' (StatusCode.INVALID_ARGUMENT)"]
    assert not any(is_transient(BoxInstError(m)) for m in bad)
    assert not is_transient(BoxInstTimeout("request timed out: Deadline Exceeded"))
    unknown = BoxInstError("Request for unknown model: 'boxinst_raw' is not found (StatusCode.UNAVAILABLE)")
    assert is_transient(unknown, model_answered_before=True)  # being reloaded
    assert not is_transient(unknown, model_answered_before=False)  # a repository without it: say so at once
