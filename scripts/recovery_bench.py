"""Recovery of a killed step under load (docs/benchmarks.md, "Recovery of a killed step").

    python scripts/recovery_bench.py REPOSITORY [--concurrency 4] [--image IMG]

Starts tritonserver on REPOSITORY with `boxinst serve`'s supervisor, keeps `--concurrency` clients
sending requests through the step about to die (the encoded image to the `boxinst` ensemble, or the
raw frame to the raw ensemble or the one-process raw model), SIGKILLs that step's process (each
of --steps in turn, a fresh supervisor each), and
prints per step: requests failed with client retries off, how long after the kill the last one
failed, the window in which the server's ready endpoint said not ready, the supervisor's events,
and then the same with the client's default retries (failures a user sees). Then the time
`stop()` takes with a step that died."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from boxinst_serve.client import BoxInstClient
from boxinst_serve.measure import machine_description
from boxinst_serve.serving.server import TritonServer
from boxinst_serve.serving.processes import server_stubs
from boxinst_serve.serving.supervisor import Supervisor, SupervisorSettings

# step killed -> what the clients send: the encoded image to the `boxinst` ensemble, or the raw
# frame to the model whose step it is (the raw ensemble, or the one-process raw model)
STEPS = {"boxinst_preprocess": None, "boxinst_net": None, "boxinst_postprocess": None,
         "boxinst_preprocess_raw": "boxinst_raw", "boxinst_raw_fused": "boxinst_raw_fused"}


def one_kill(server: TritonServer, step: str, data: bytes, frame: np.ndarray, concurrency: int,
             retry_s: float) -> dict:
    import tritonclient.grpc as grpcclient

    supervisor = Supervisor(server, SupervisorSettings()).start()
    stop, lock, log, health = threading.Event(), threading.Lock(), [], []

    def load() -> None:
        raw_model = STEPS[step]
        with BoxInstClient(server.grpc_url, timeout_s=30, retry_s=retry_s, raw_model=raw_model) as client:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    client.segment(frame if raw_model else data)
                    ok = True
                except Exception:  # noqa: BLE001 - counted
                    ok = False
                    time.sleep(0.05)
                with lock:
                    log.append((t0, time.monotonic(), ok))

    def probe() -> None:
        c = grpcclient.InferenceServerClient(server.grpc_url)
        while not stop.is_set():
            try:
                ready = c.is_server_ready(client_timeout=1)
            except Exception:  # noqa: BLE001
                ready = False
            health.append((time.monotonic(), ready))
            time.sleep(0.1)
        c.close()

    threads = [threading.Thread(target=load) for _ in range(concurrency)] + [threading.Thread(target=probe)]
    for t in threads:
        t.start()
    time.sleep(3)
    pid = next(s.pid for s in server_stubs(server.process.pid).values() if s.model == step)
    killed, killed_wall = time.monotonic(), time.time()
    os.kill(pid, signal.SIGKILL)
    deadline = killed + 60
    while time.monotonic() < deadline and not any(k == "recovered" for _, k, _ in supervisor.events):
        time.sleep(0.1)
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    supervisor.stop()
    failed = [x for x in log if not x[2]]
    last = max((t1 for _, t1, _ in failed), default=killed)
    not_ready = [t - killed for t, r in health if not r and t >= killed]
    return {"step": step, "retry_s": retry_s, "requests": len(log), "failed": len(failed),
            "last_failure_s": round(last - killed, 2) if failed else 0.0,
            "not_ready_s": (round(min(not_ready), 2), round(max(not_ready), 2)) if not_ready else None,
            "events": [(round(t - killed_wall, 1), k) for t, k, _ in supervisor.events if k != "watch"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("repository")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--image", default=None, help="image file (default: a 240x320 synthetic frame)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    args = p.parse_args()
    import cv2

    if args.image:
        from boxinst_serve.preprocess import read_image

        frame = read_image(args.image)
    else:
        frame = np.full((240, 320, 3), 40, np.uint8)
        cv2.rectangle(frame, (60, 50), (200, 170), (200, 60, 60), -1)
    data = cv2.imencode(".png", frame)[1].tobytes()
    print(f"machine: {machine_description()}; repository {args.repository}; concurrency {args.concurrency}")
    # ports of 0: free ones, chosen by start() (again if another process takes one first)
    server = TritonServer(Path(args.repository), grpc_port=0, http_port=0, metrics_port=0)
    server.start(240)
    try:
        for retry_s in (0.0, 15.0):
            for step in args.steps.split(","):
                r = one_kill(server, step, data, frame, args.concurrency, retry_s)
                print(f"{r['step']}: client retries {'off' if not retry_s else f'{retry_s:g} s'}: {r['failed']} of "
                      f"{r['requests']} requests failed, the last {r['last_failure_s']} s after the kill; "
                      f"not ready {r['not_ready_s']} s after it; supervisor {r['events']}", flush=True)
    finally:
        t0 = time.monotonic()
        server.stop()
        print(f"stop with steps that died: {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
