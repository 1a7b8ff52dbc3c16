"""Latency measurement of engines, end to end: pre-processing (resize + pad of a decoded RGB
image), the network (the engine call) and post-processing (boxes rescaled, masks pasted at the
original size, RLE). Timings are wall-clock; on CUDA the engines return host arrays, so each call
is synchronised.

Also: the per-stage breakdown of the PyTorch path, the network's FLOPs (torch's flop counter,
1 multiply-add = 2 FLOPs), the machine's dense matrix-product throughput measured in the same run,
and the compute efficiency (achieved FLOP/s end to end over that dense FLOP/s).

Imports numpy only at module level: `network_flops` and `dense_flops_per_s` serve the GPU check (boxinst_serve.apps.bench.gpu), which runs with torch/torchvision/numpy alone (no
OpenCV, pycocotools or ONNX); pre- and post-processing are imported where they are used."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from boxinst_serve.config import network_input_hw
from boxinst_serve.engines import Engine
from boxinst_serve.measure import percentile_ms, timed_loop


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
    stages_ms: dict | None = None  # per-stage p50 (PyTorch engine only)
    gflops: float | None = None  # network FLOPs per batch, 1e9
    efficiency: float | None = None  # (gflops / p50) / dense GFLOP/s

    def to_dict(self) -> dict:
        return asdict(self)


def measure(engine: Engine, name: str, image: np.ndarray, batch: int = 1, iters: int = 20,
            warmup: int = 3) -> LatencyReport:
    """Time `iters` end-to-end calls on `batch` copies of `image` (RGB uint8 [H, W, 3]) after
    `warmup` untimed ones. FPS counts images per second at the median latency."""
    from boxinst_serve.predictor import Predictor

    predictor = Predictor(engine)
    images = [image] * batch
    dets: list[float] = []

    def step() -> dict[str, float]:
        results, seconds = predictor.timed(images)
        dets.append(sum(len(r) for r in results) / batch)
        return seconds

    times = timed_loop(step, iters, warmup)
    dets = dets[warmup:]
    p50 = percentile_ms(times["total"], 50)
    input_hw = network_input_hw(engine.config, *image.shape[:2])
    return LatencyReport(engine=name, input_hw=input_hw, batch=batch, iters=iters,
                         p50_ms=p50, p90_ms=percentile_ms(times["total"], 90), p99_ms=percentile_ms(times["total"], 99),
                         mean_ms=float(np.mean(times["total"]) * 1000), fps=batch * 1000.0 / p50,
                         preprocess_ms=percentile_ms(times["pre"], 50), network_ms=percentile_ms(times["network"], 50),
                         postprocess_ms=percentile_ms(times["post"], 50), detections=float(np.mean(dets)))


def format_reports(reports: list[LatencyReport]) -> str:
    lines = ["| engine | input | batch | p50 ms | p90 ms | p99 ms | FPS | pre ms | network ms | post ms | dets "
             "| GFLOPs | efficiency |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        eff = f"{r.efficiency:.2f}" if r.efficiency is not None else "-"
        gf = f"{r.gflops:.1f}" if r.gflops is not None else "-"
        lines.append(f"| {r.engine} | {r.input_hw[0]}x{r.input_hw[1]} | {r.batch} | {r.p50_ms:.1f} | {r.p90_ms:.1f} | "
                     f"{r.p99_ms:.1f} | {r.fps:.2f} | {r.preprocess_ms:.1f} | {r.network_ms:.1f} | "
                     f"{r.postprocess_ms:.1f} | {r.detections:.1f} | {gf} | {eff} |")
    for r in reports:
        if r.stages_ms:
            lines.append(f"{r.engine} stages (p50 ms, run stage by stage): " +
                         ", ".join(f"{k} {v:.1f}" for k, v in r.stages_ms.items()))
    return "\n".join(lines)


PAPER_LINE = "paper: ~10 FPS, R-101, 1080Ti"
STAGES = ("preprocess", "backbone_fpn", "fcos_head", "mask_branch", "decode_nms", "dynamic_mask_heads",
          "paste_masks")


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def network_flops(model, images) -> int:
    """FLOPs of one forward of the whole inference network (CondInst + decoding + the K padded
    dynamic mask heads) on `images` (uint8 tensor [B, H, W, 3]), counted by torch's FlopCounterMode
    (convolutions, matrix products; 1 multiply-add = 2 FLOPs; element-wise ops not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from boxinst_serve.model.detect import InferenceModel

    net = InferenceModel(model).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(images)
    return int(counter.get_total_flops())


def dense_flops_per_s(device: str = "cpu", dtype=None, n: int | None = None, seconds: float = 1.0) -> float:
    """Best sustained FLOP/s of a square matrix product on this machine, now (fp32 on CPU, the
    given dtype, default fp16 tensor cores, on GPU): the roofline the efficiency is measured against."""
    import torch

    dev = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
    n = n or (8192 if dev.type == "cuda" else 1536)
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    _sync(dev)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(3):
            torch.mm(a, b)
        _sync(dev)
        best = max(best, 3 * 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def staged_latency(model, image: np.ndarray, batch: int = 1, iters: int = 10, warmup: int = 2,
                   device: str = "cpu") -> dict[str, float]:
    """p50 ms of each stage of the PyTorch path, run stage by stage (synchronised on CUDA):
    pre-processing, backbone + FPN, FCOS head (with the controller), mask branch, decoding + NMS,
    dynamic mask heads, mask pasting (+ RLE)."""
    import torch

    from boxinst_serve.model.condinst import HeadOutputs
    from boxinst_serve.model.detect import contract_outputs, detection_masks, select_detections
    from boxinst_serve.postprocess import instances_for
    from boxinst_serve.preprocess import prepare_for

    cfg = model.cfg
    model = model.eval()
    dtype = next(model.parameters()).dtype
    times: dict[str, list[float]] = {k: [] for k in STAGES}
    with torch.inference_mode():
        for i in range(warmup + iters):
            t = [time.perf_counter()]
            inputs, metas = prepare_for(cfg, [image] * batch)
            x = torch.from_numpy(inputs).to(device)
            _sync(device)
            t.append(time.perf_counter())
            feats = model.backbone(model.normalize(x).to(dtype))
            _sync(device)
            t.append(time.perf_counter())
            cls_logits, bbox_reg, centerness, controller = model.head(feats)
            _sync(device)
            t.append(time.perf_counter())
            mask_feats = model.mask_branch(feats)
            _sync(device)
            t.append(time.perf_counter())
            out = HeadOutputs(cls_logits, bbox_reg, centerness, controller, mask_feats)
            sel = select_detections(out, cfg, (x.shape[1], x.shape[2]))
            _sync(device)
            t.append(time.perf_counter())
            masks = detection_masks(mask_feats, sel, cfg)
            result = {k: v.cpu().numpy() for k, v in contract_outputs(sel, masks).items()}
            t.append(time.perf_counter())
            for k in range(batch):
                instances_for(cfg, result, k, metas[k])
            t.append(time.perf_counter())
            if i >= warmup:
                for name, a, b in zip(STAGES, t[:-1], t[1:]):
                    times[name].append(b - a)
    return {name: percentile_ms(v, 50) for name, v in times.items()}
