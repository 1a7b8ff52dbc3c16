"""Latency measurement of engines, end to end: pre-processing (resize + pad of a decoded RGB
image), the network (the engine call) and post-processing (boxes rescaled, masks pasted at the
original size, RLE). Timings are wall-clock; on CUDA the engines return host arrays, so each call
is synchronised."""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass

import numpy as np

from boxinst_serve.engines import Engine
from boxinst_serve.postprocess import to_instances
from boxinst_serve.preprocess import prepare_batch


@dataclass
class LatencyReport:
    engine: str
    input_hw: tuple[int, int]
    batch: int
    iters: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    fps: float
    preprocess_ms: float
    network_ms: float
    postprocess_ms: float
    detections: float

    def to_dict(self) -> dict:
        return asdict(self)


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def measure(engine: Engine, name: str, image: np.ndarray, batch: int = 1, iters: int = 20,
            warmup: int = 3) -> LatencyReport:
    """Time `iters` end-to-end calls on `batch` copies of `image` (RGB uint8 [H, W, 3]) after
    `warmup` untimed ones. FPS counts images per second at the median latency."""
    cfg = engine.config
    images = [image] * batch
    total, pre, net, post, dets = [], [], [], [], []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        inputs, metas = prepare_batch(images, cfg.min_size_test, cfg.max_size_test, cfg.size_divisibility)
        t1 = time.perf_counter()
        outputs = engine(inputs)
        t2 = time.perf_counter()
        results = [to_instances(outputs, k, metas[k], cfg.mask_out_stride, cfg.mask_threshold) for k in range(batch)]
        t3 = time.perf_counter()
        if i >= warmup:
            total.append(t3 - t0)
            pre.append(t1 - t0)
            net.append(t2 - t1)
            post.append(t3 - t2)
            dets.append(sum(len(r) for r in results) / batch)
    p50 = _ms(total, 50)
    return LatencyReport(engine=name, input_hw=tuple(int(v) for v in inputs.shape[1:3]), batch=batch, iters=iters,
                         p50_ms=p50, p90_ms=_ms(total, 90), p99_ms=_ms(total, 99),
                         mean_ms=float(np.mean(total) * 1000), fps=batch * 1000.0 / p50,
                         preprocess_ms=_ms(pre, 50), network_ms=_ms(net, 50), postprocess_ms=_ms(post, 50),
                         detections=float(np.mean(dets)))


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs"


def format_reports(reports: list[LatencyReport]) -> str:
    lines = ["| engine | input | batch | p50 ms | p90 ms | p99 ms | FPS | pre ms | network ms | post ms | dets |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        lines.append(f"| {r.engine} | {r.input_hw[0]}x{r.input_hw[1]} | {r.batch} | {r.p50_ms:.1f} | {r.p90_ms:.1f} | "
                     f"{r.p99_ms:.1f} | {r.fps:.2f} | {r.preprocess_ms:.1f} | {r.network_ms:.1f} | "
                     f"{r.postprocess_ms:.1f} | {r.detections:.1f} |")
    return "\n".join(lines)
