"""Load benchmark of a running server (`boxinst bench --url`): requests/s, latency percentiles and
refusals (a full queue: ServerBusy) per concurrency level. What it needs of the server it asks the
server (boxinst_net's config over gRPC), so a remote server needs no local repository. Given the
served repository, also the in-process latency of the same work on the same image in the same run
(decode, pad to its own size, ONNX Runtime on the repository's model, paste + RLE), so the serving
overhead is a ratio rather than an absolute number that depends on the machine."""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path


from boxinst_serve.client import BoxInstClient, BoxInstError, ServerBusy
from boxinst_serve.config import network_input_hw
from boxinst_serve.measure import StageClock, percentile_ms, timed_loop


@dataclass
class LoadReport:
    concurrency: int
    requests: int  # answered
    errors: int  # failed, refusals included
    busy: int  # refused at once for a full queue (ServerBusy)
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
    errors, busy = [0], [0]
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker() -> None:
        with BoxInstClient(url, timeout_s=timeout_s, **(client_kwargs or {})) as c:
            for _ in range(warmup):
                try:
                    c.segment(data)
                except BoxInstError:  # e.g. a bounded queue's refusal: not counted; every worker must start
                    pass
            start.wait()
            while time.perf_counter() < stop_at[0]:
                t0 = time.perf_counter()
                refused = False
                try:
                    c.segment(data)
                    ok = True
                except ServerBusy:
                    ok, refused = False, True
                except Exception:  # noqa: BLE001 - counted
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        errors[0] += 1
                        busy[0] += refused

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
    return LoadReport(concurrency=concurrency, requests=len(latencies), errors=errors[0], busy=busy[0],
                      seconds=elapsed,
                      requests_per_s=len(latencies) / elapsed, p50_ms=percentile_ms(latencies, 50),
                      p95_ms=percentile_ms(latencies, 95), p99_ms=percentile_ms(latencies, 99))


def measure_in_process(repository: str | Path, data: bytes, iters: int = 30, warmup: int = 3,
                       threads: int = 0, spinning: bool = True) -> dict:
    """The server's work without the server: decode, pad to its own size, the served network's
    engine (ONNX Runtime, or OpenVINO for an `openvino` flavour: serving.fused.net_engine), paste + RLE."""
    from boxinst_serve.predictor import Predictor
    from boxinst_serve.preprocess import decode_image
    from boxinst_serve.serving import ServingConfig
    from boxinst_serve.serving.fused import net_engine

    serving = ServingConfig.load(repository)
    predictor = Predictor(net_engine(repository, threads, spinning), serving.model)
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


def served_queue(net_config: dict) -> dict:
    """What the server says of its network's queue (boxinst_net's config as Triton's JSON):
    {"instances", "max_queue_size" (0: unbounded), "timeout_ms" (0: none)}."""
    cfg = net_config.get("config", net_config)
    policy = cfg.get("dynamic_batching", {}).get("default_queue_policy", {})
    return {"instances": sum(int(g.get("count", 1)) for g in cfg.get("instance_group", [])) or 1,
            "max_queue_size": int(policy.get("max_queue_size", 0)),
            "timeout_ms": int(policy.get("default_timeout_microseconds", 0)) // 1000}


def format_load(reports: list[LoadReport], in_process: dict | None) -> str:
    """The load table; with the in-process run, its latency and each p50's ratio to it."""
    base = in_process["p50_ms"] if in_process else None
    lines = [f"in-process (same image, same work): p50 {base:.1f} ms, p95 {in_process['p95_ms']:.1f} ms, "
             f"{in_process['instances']} instances"] if in_process else []
    lines += ["| concurrency | requests | errors | busy | req/s | p50 ms | p95 ms | p99 ms |"
              + (" p50 / in-process |" if base else ""),
              "|---|---|---|---|---|---|---|---|" + ("---|" if base else "")]
    for r in reports:
        ratio = f" {r.p50_ms / base:.2f} |" if base else ""
        lines.append(f"| {r.concurrency} | {r.requests} | {r.errors} | {r.busy} | {r.requests_per_s:.2f} | "
                     f"{r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} |{ratio}")
    return "\n".join(lines)
