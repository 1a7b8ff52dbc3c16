"""Load benchmark of a running server (`boxinst bench --url`): requests/s and latency percentiles
per concurrency level, plus the in-process latency of the same work on the same image in the same
run (decode, pad to its own size, ONNX Runtime on the repository's model, paste + RLE), so the serving
overhead is a ratio rather than an absolute number that depends on the machine."""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path


from boxinst_serve.client import BoxInstClient
from boxinst_serve.config import network_input_hw
from boxinst_serve.measure import StageClock, percentile_ms, timed_loop


@dataclass
class LoadReport:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def measure_load(url: str, data: bytes, concurrency: int, duration_s: float, warmup: int = 2,
                 timeout_s: float = 60.0, client_kwargs: dict | None = None) -> LoadReport:
    """`concurrency` clients (one gRPC channel each) send `data` back to back for `duration_s`."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker() -> None:
        with BoxInstClient(url, timeout_s=timeout_s, **(client_kwargs or {})) as c:
            for _ in range(warmup):
                c.segment(data)
            start.wait()
            while time.perf_counter() < stop_at[0]:
                t0 = time.perf_counter()
                try:
                    c.segment(data)
                    ok = True
                except Exception:  # noqa: BLE001 - counted
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + 1e9
    start.wait()
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration_s
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return LoadReport(concurrency=concurrency, requests=len(latencies), errors=errors[0], seconds=elapsed,
                      requests_per_s=len(latencies) / elapsed, p50_ms=percentile_ms(latencies, 50),
                      p95_ms=percentile_ms(latencies, 95), p99_ms=percentile_ms(latencies, 99))


def measure_in_process(repository: str | Path, data: bytes, iters: int = 30, warmup: int = 3,
                       threads: int = 0, spinning: bool = True) -> dict:
    """The server's work without the server: decode, pad to its own size, ONNX Runtime, paste + RLE."""
    from boxinst_serve.engines.onnxruntime_engine import OnnxRuntimeEngine
    from boxinst_serve.predictor import Predictor
    from boxinst_serve.preprocess import decode_image
    from boxinst_serve.serving import ServingConfig
    from boxinst_serve.serving.fused import net_onnx_path

    serving = ServingConfig.load(repository)
    predictor = Predictor(OnnxRuntimeEngine(net_onnx_path(repository), threads=threads, spinning=spinning),
                          serving.model)
    dets: list[int] = []
    image_hw: list[int] = []  # the decoded image's size, from the timed decode

    def step() -> dict[str, float]:
        clock = StageClock()
        image = decode_image(data, max_pixels=serving.max_pixels)
        clock.lap("decode")
        image_hw[:] = image.shape[:2]
        (inst,), seconds = predictor.timed([image])
        dets.append(len(inst))
        return {**clock.laps, **seconds}

    times = timed_loop(step, iters, warmup)
    return {"iters": iters, "p50_ms": percentile_ms(times["total"], 50), "p95_ms": percentile_ms(times["total"], 95),
            "p99_ms": percentile_ms(times["total"], 99), "instances": dets[-1],
            "input_hw": list(network_input_hw(serving.model, *image_hw))}


def format_load(reports: list[LoadReport], in_process: dict) -> str:
    base = in_process["p50_ms"]
    lines = [f"in-process (same image, same work): p50 {base:.1f} ms, p95 {in_process['p95_ms']:.1f} ms, "
             f"{in_process['instances']} instances",
             "| concurrency | requests | errors | req/s | p50 ms | p95 ms | p99 ms | p50 / in-process |",
             "|---|---|---|---|---|---|---|---|"]
    for r in reports:
        lines.append(f"| {r.concurrency} | {r.requests} | {r.errors} | {r.requests_per_s:.2f} | {r.p50_ms:.1f} | "
                     f"{r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.p50_ms / base:.2f} |")
    return "\n".join(lines)
