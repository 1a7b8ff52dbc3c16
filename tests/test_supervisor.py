"""`boxinst serve` heals itself (issue: supervision): a step process killed under load is brought
back, health says not ready meanwhile, stopping a server with a dead step is quick, nothing is
left in /dev/shm, and a dead tritonserver is restarted on the same ports. Against the real
tritonserver; every wait is bounded."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from servers import encode, repository_copy

pytest.importorskip("tritonclient.grpc")

from boxinst_serve.client import BoxInstClient  # noqa: E402
from boxinst_serve.serving.probe import probe_http  # noqa: E402
from boxinst_serve.serving.server import TritonServer, free_port, which_tritonserver  # noqa: E402
from boxinst_serve.serving.processes import server_stubs  # noqa: E402
from boxinst_serve.serving.supervisor import GaveUp, Supervisor, SupervisorSettings  # noqa: E402

pytestmark = pytest.mark.skipif(which_tritonserver() is None, reason="no tritonserver binary (nvidia-pytriton)")
SHM = Path("/dev/shm")


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
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    while not stop.is_set():
        try:
            ready = client.is_server_ready(client_timeout=1)
        except Exception:  # noqa: BLE001 - not answering is not ready
            ready = False
        samples.append((time.monotonic(), ready))
        time.sleep(0.1)
    client.close()


def _regions_of(server: TritonServer) -> list[str]:
    return [s.shm_region for s in server_stubs(server.process.pid).values()]


def test_a_step_killed_under_load_comes_back_with_honest_health(repository):
    image = np.full((128, 160, 3), 40, np.uint8)
    image[30:90, 40:120] = (200, 60, 60)
    data = encode(image, ".png")
    server = TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server.start(240)
    supervisor = Supervisor(server, SupervisorSettings(probe_s=2.0)).start()
    stop, lock, log, health = threading.Event(), threading.Lock(), [], []
    threads = [threading.Thread(target=_load, args=(server.grpc_url, data, stop, log, lock)) for _ in range(4)]
    threads.append(threading.Thread(target=_health, args=(server.grpc_url, stop, health)))
    try:
        for t in threads:
            t.start()
        time.sleep(3)
        stub = next(s for s in server_stubs(server.process.pid).values() if s.model == "boxinst_postprocess")
        killed = time.monotonic()
        os.kill(stub.pid, signal.SIGKILL)
        deadline = killed + 30
        while time.monotonic() < deadline and not any(k == "recovered" for _, k, _ in supervisor.events):
            time.sleep(0.2)
        time.sleep(3)  # requests after the recovery
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    try:
        before = [e for t0, _, e in log if t0 < killed - 1.0]
        assert before and not any(before), "requests failed before the kill"
        failures = [(t0, t1, e) for t0, t1, e in log if e]
        assert failures, "no request failed: the kill did not hit the served path"
        assert all(t0 >= killed - 1.0 for t0, _, _ in failures), failures[:3]
        last_failure = max((t1 for _, t1, _ in failures), default=killed)
        recovered_s = last_failure - killed
        after = [e for t0, _, e in log if t0 > last_failure]
        assert len(after) >= 4 and not any(after), "requests still fail after the recovery"
        assert recovered_s < 10, f"requests failed for {recovered_s:.1f} s after the kill"
        assert any(not r for t, r in health if killed <= t <= killed + 10), "health said ready throughout the outage"
        assert health[-1][1] is True
        kinds = [k for _, k, _ in supervisor.events]
        assert "reload" in kinds and "recovered" in kinds and "restart" not in kinds, supervisor.events
        print(f"\nkilled boxinst_postprocess under load at concurrency 4: {len(failures)} of {len(log)} requests failed, "
              f"the last {recovered_s:.1f} s after the kill")
    finally:
        supervisor.stop()
        regions = _regions_of(server)
        t0 = time.monotonic()
        server.stop()
        stop_s = time.monotonic() - t0
    assert stop_s < 5, f"stopping a server that lost a step took {stop_s:.1f} s"
    assert not [r for r in regions if (SHM / r).exists()], "the server left shared-memory regions"
    assert not [p.name for p in SHM.glob(f"boxinst_{os.getpid()}_*")], "a client left shared-memory regions"


def test_a_dead_tritonserver_is_restarted_on_the_same_ports(repository):
    server = TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server.start(240)
    supervisor = Supervisor(server, SupervisorSettings(probe_s=0)).start()
    frame = np.full((64, 80, 3), 114, np.uint8)
    # Made before the restart: its shared-memory registrations and its choice of raw model die with the server.
    client = BoxInstClient(server.grpc_url, timeout_s=30, shared_memory=True)
    try:
        client.segment(frame)
        regions = _regions_of(server)
        os.killpg(server.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(k == "recovered" for _, k, _ in supervisor.events):
            time.sleep(0.2)
        assert [k for _, k, _ in supervisor.events][-2:] == ["restart", "recovered"], supervisor.events
        assert not [r for r in regions if (SHM / r).exists()], "the killed server's step regions were left"
        assert client.is_ready()
        client.segment(frame)  # registers its regions again
        assert client.retried >= 1
        # The container's health check (no supervisor there): a tiny inference, not the ready endpoint.
        assert probe_http(f"127.0.0.1:{server.http_port}") >= 0
        supervisor.stop()
        step = next(s for s in server_stubs(server.process.pid).values() if s.model == "boxinst_preprocess_raw")
        os.kill(step.pid, signal.SIGKILL)
        time.sleep(0.5)
        with pytest.raises(RuntimeError, match="not healthy"):
            probe_http(f"127.0.0.1:{server.http_port}")
    finally:
        client.close()
        supervisor.stop()
        server.stop()
    assert not [p.name for p in SHM.glob(f"boxinst_{os.getpid()}_*")], "a client left shared-memory regions"


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
    server = TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server.start(240)
    supervisor = Supervisor(server, SupervisorSettings(probe_s=0)).start()
    client = BoxInstClient(server.grpc_url, timeout_s=30, max_workers=4)
    done = threading.Event()
    try:
        model = client.raw_model  # the step raw frames go to: the one to kill
        runner = threading.Thread(target=lambda: (process_videos(str(clip), tmp_path / "out",
                                                                 client_batch_predictor(client), batch_size=4,
                                                                 progress=False), done.set()))
        runner.start()
        time.sleep(1.0)
        stub = next(s for s in server_stubs(server.process.pid).values() if s.model == model)
        os.kill(stub.pid, signal.SIGKILL)
        runner.join(timeout=180)
        assert done.is_set(), "the video run did not finish"
    finally:
        client.close()
        supervisor.stop()
        server.stop()
    lines = (tmp_path / "out" / "clip" / JSONL).read_text().splitlines()
    import json

    frames = [json.loads(line)["frame"] for line in lines]
    assert frames == list(range(n)), "a frame was lost or written twice"
    assert client.retried >= 1, "the kill did not hit a request: the test proved nothing"


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
