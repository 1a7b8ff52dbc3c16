"""GPU check: end-to-end latency of the paper's models on a bare GPU machine.

Runs with torch, torchvision and numpy alone (no OpenCV, pycocotools, ONNX or TensorRT, no
package installs): only `boxinst_serve.config`, `.model`, `.checkpoint`, `.files` and the
numpy-level helpers of `.bench` and `.postprocess` are imported, and pre- and post-processing run
here in torch on the device. Started by `scripts/gpu_bench.sh`; `tests/test_bench_gpu.py` runs it on the CPU at a
tiny size (with those packages made unimportable) so that it cannot rot.

One row per (config, batch, precision): the same frame (random pixels, or --image as .npy) sent
as a batch of B copies through
- pre-processing on the device: host-to-device copy of the decoded uint8 frames, bilinear resize
  to the test size (short side / max side of the config), zero padding to a multiple of 32;
- the network: the inference module that engines run and export traces (normalisation, backbone,
  FPN, heads, decoding, NMS, the dynamic mask heads of all K slots); fp32, or fp16 with the weights
  in half precision (`half`) or under autocast (`autocast`);
- post-processing on the device: boxes rescaled to the frame, each detection's stride-4 mask
  pasted at the frame's full resolution and thresholded (the CPU path's bilinear sampling, dense),
  the boolean masks copied to the host (Triton's RLE encoding is not part of this check).
Timings are wall-clock with the device synchronised at each stage boundary; p50 over the timed
iterations; FPS = batch / p50. FLOPs are torch's FlopCounterMode count of the network (1
multiply-add = 2 FLOPs); efficiency = achieved FLOP/s end to end over the dense matrix-product
FLOP/s measured in the same run in the same precision.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from boxinst_serve.config import padded_size, preset, resized_shape
from boxinst_serve.measure import StageClock, percentile_ms, timed_loop


@dataclass
class GpuRow:
    config: str
    frame_hw: tuple[int, int]
    input_hw: tuple[int, int]
    batch: int
    precision: str
    iters: int
    p50_ms: float
    p90_ms: float
    fps: float
    preprocess_ms: float
    network_ms: float
    postprocess_ms: float
    detections: float
    gflops: float
    efficiency: float

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def preprocess(frames: torch.Tensor, min_size: int, max_size: int, divisibility: int,
               device: torch.device) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decoded frames uint8 [B, H, W, 3] (host) -> (network input uint8 [B, Hp, Wp, 3] on the
    device, resized (h, w) before padding). Bilinear resize as the CPU path's cv2 INTER_LINEAR."""
    x = frames.to(device, non_blocking=True)
    h, w = x.shape[1:3]
    nh, nw = resized_shape(h, w, min_size, max_size)
    if (nh, nw) != (h, w):
        y = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(nh, nw), mode="bilinear", align_corners=False)
        x = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    hp, wp = padded_size(nh, divisibility), padded_size(nw, divisibility)
    x = F.pad(x, (0, 0, 0, wp - nw, 0, hp - nh))
    return x.contiguous(), (nh, nw)


def paste_masks_on_device(masks: torch.Tensor, resized_hw: tuple[int, int], frame_hw: tuple[int, int],
                          mask_stride: int, mask_threshold: float) -> torch.Tensor:
    """masks: uint8 [N, Hp/s, Wp/s] probability x 255 on the device -> bool [N, H, W] at the frame
    size: the CPU path's one bilinear sample per output pixel (boxinst_serve.postprocess, same
    sample positions and threshold), computed densely with tensor gathers on the device."""
    from boxinst_serve.postprocess import _axis_samples

    (nh, nw), (fh, fw) = resized_hw, frame_hw
    hs, ws = masks.shape[1:]
    dev = masks.device
    iy0, iy1, fy = (torch.from_numpy(np.asarray(a)).to(dev) for a in _axis_samples(0, fh, hs, nh / fh, mask_stride))
    ix0, ix1, fx = (torch.from_numpy(np.asarray(a)).to(dev) for a in _axis_samples(0, fw, ws, nw / fw, mask_stride))
    m = masks.float()
    r = m[:, iy0] * (1.0 - fy)[:, None] + m[:, iy1] * fy[:, None]  # [N, H, Ws]
    v = r[:, :, ix0] * (1.0 - fx) + r[:, :, ix1] * fx  # [N, H, W]
    return v > mask_threshold * 255.0


def postprocess(outputs: tuple[torch.Tensor, ...], resized_hw: tuple[int, int], frame_hw: tuple[int, int],
                mask_stride: int, mask_threshold: float) -> list[dict[str, np.ndarray]]:
    """Contract outputs (device tensors, OUTPUT_NAMES order) -> per image, on the host: boxes
    float [N, 4] in frame pixels, scores [N], classes [N], masks bool [N, H, W] at frame size."""
    num, boxes, scores, classes, masks = outputs
    nh, nw = resized_hw
    fh, fw = frame_hw
    scale = torch.tensor([fw / nw, fh / nh, fw / nw, fh / nh], device=boxes.device)
    results = []
    for i, n in enumerate(num.tolist()):
        b = (boxes[i, :n].float() * scale).clamp_(min=0)
        b[:, 0::2] = b[:, 0::2].clamp(max=fw)
        b[:, 1::2] = b[:, 1::2].clamp(max=fh)
        pasted = paste_masks_on_device(masks[i, :n], resized_hw, frame_hw, mask_stride, mask_threshold)
        results.append({"boxes": b.cpu().numpy(), "scores": scores[i, :n].float().cpu().numpy(),
                        "classes": classes[i, :n].cpu().numpy(), "masks": pasted.cpu().numpy()})
    return results


def build_network(config: str, checkpoint: str | None, size: tuple[int, int], score_thresh: float | None,
                  device: torch.device):
    """(InferenceModel in eval mode on the device, its ModelConfig): trained weights from a
    checkpoint, or a freshly initialised preset (speed does not depend on the weights)."""
    from boxinst_serve.model import build_model
    from boxinst_serve.model.detect import InferenceModel

    overrides = {"min_size_test": min(size), "max_size_test": max(size)}
    if score_thresh is not None:
        overrides["score_thresh"] = score_thresh
    if checkpoint:
        from boxinst_serve.checkpoint import load_model

        model = load_model(checkpoint, "cpu")
        model.cfg = model.cfg.replace(**overrides)
    else:
        torch.manual_seed(0)
        model = build_model(preset(config).replace(**overrides))
    net = InferenceModel(model).eval().to(device)
    return net, model.cfg


def measure(net, cfg, frame: np.ndarray, batch: int, precision: str, device: torch.device, iters: int,
            warmup: int) -> dict:
    """Time `iters` end-to-end batches after `warmup`; returns p50/p90 and per-stage p50 in ms and
    the mean detections per image."""
    frames = torch.from_numpy(np.repeat(frame[None], batch, axis=0))
    if device.type == "cuda":
        frames = frames.pin_memory()
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=precision == "fp16-autocast")
    dets, input_hw = [], []

    def step() -> dict[str, float]:
        clock = StageClock(sync=lambda: _sync(device))
        x, resized_hw = preprocess(frames, cfg.min_size_test, cfg.max_size_test, cfg.size_divisibility, device)
        clock.lap("pre")
        with autocast:
            outputs = net(x)
        clock.lap("network")
        results = postprocess(outputs, resized_hw, frame.shape[:2], cfg.mask_out_stride, cfg.mask_threshold)
        clock.lap("post")
        dets.append(sum(len(r["scores"]) for r in results) / batch)
        input_hw[:] = x.shape[1:3]
        return clock.laps

    with torch.inference_mode():
        times = timed_loop(step, iters, warmup)
    return {"p50_ms": percentile_ms(times["total"], 50), "p90_ms": percentile_ms(times["total"], 90),
            "preprocess_ms": percentile_ms(times["pre"], 50), "network_ms": percentile_ms(times["network"], 50),
            "postprocess_ms": percentile_ms(times["post"], 50), "detections": float(np.mean(dets[warmup:])),
            "input_hw": tuple(input_hw)}


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, torch {torch.__version__}"
    from boxinst_serve.measure import machine_description

    return f"{machine_description()}, torch {torch.__version__} (CPU)"


def format_table(report: dict) -> str:
    lines = [f"device: {report['device']}; dense matrix product measured now: "
             + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in report["dense_flops_per_s"].items()),
             "",
             "| model | frame | input | batch | precision | p50 ms | p90 ms | FPS | pre ms | network ms | post ms | dets "
             "| GFLOPs/image | efficiency |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['config']} | {r['frame_hw'][0]}x{r['frame_hw'][1]} | {r['input_hw'][0]}x{r['input_hw'][1]} "
                     f"| {r['batch']} | {r['precision']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['fps']:.1f} "
                     f"| {r['preprocess_ms']:.1f} | {r['network_ms']:.1f} | {r['postprocess_ms']:.1f} "
                     f"| {r['detections']:.0f} | {r['gflops'] / r['batch']:.1f} | {r['efficiency']:.2f} |")
    return "\n".join(lines)


def run(configs: list[str], size: tuple[int, int], batches: list[int], precisions: list[str], device: str,
        iters: int, warmup: int, out_dir: str | os.PathLike, checkpoint: str | None = None,
        score_thresh: float | None = 0.0, frame: np.ndarray | None = None, dense_seconds: float = 1.0) -> dict:
    """Every (config, batch, precision) row; writes OUT/gpu_bench.json and OUT/gpu_bench.md."""
    from boxinst_serve.apps.bench.engines import dense_flops_per_s, network_flops
    from boxinst_serve.files import write_json_atomic

    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False)")
        torch.backends.cudnn.benchmark = True
    for p in precisions:
        if p not in ("fp32", "fp16", "fp16-autocast"):
            raise ValueError(f"precision must be fp32, fp16 (half weights) or fp16-autocast, got {p!r}")
    if frame is None:
        frame = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    dense = {"fp32": dense_flops_per_s(device, torch.float32, n=8192 if dev.type == "cuda" else 512,
                                       seconds=dense_seconds)}
    if any(p != "fp32" for p in precisions):
        dense["fp16"] = dense_flops_per_s(device, torch.float16, n=8192 if dev.type == "cuda" else 512,
                                          seconds=dense_seconds)
    rows = []
    for name in configs:
        net, cfg = build_network(name, checkpoint, size, score_thresh, dev)
        x, _ = preprocess(torch.from_numpy(frame[None]), cfg.min_size_test, cfg.max_size_test, cfg.size_divisibility,
                          dev)
        flops_per_image = network_flops(net.model, x)
        for precision in precisions:
            net_p = copy.deepcopy(net).half() if precision == "fp16" else net
            for b in batches:
                m = measure(net_p, cfg, frame, b, precision, dev, iters, warmup)
                flops = flops_per_image * b
                dense_now = dense["fp32" if precision == "fp32" else "fp16"]
                rows.append(GpuRow(config=cfg.name, frame_hw=tuple(frame.shape[:2]), input_hw=m["input_hw"], batch=b,
                                   precision=precision, iters=iters, p50_ms=m["p50_ms"], p90_ms=m["p90_ms"],
                                   fps=b * 1000.0 / m["p50_ms"], preprocess_ms=m["preprocess_ms"],
                                   network_ms=m["network_ms"], postprocess_ms=m["postprocess_ms"],
                                   detections=m["detections"], gflops=flops / 1e9,
                                   efficiency=(flops / (m["p50_ms"] / 1000.0)) / dense_now).to_dict())
                print(f"{cfg.name} batch {b} {precision}: p50 {m['p50_ms']:.1f} ms, "
                      f"{b * 1000.0 / m['p50_ms']:.1f} FPS", flush=True)
        del net
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    report = {"device": device_description(dev), "host": platform.node(), "python": sys.version.split()[0],
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "size": list(size), "score_thresh": score_thresh,
              "checkpoint": checkpoint, "iters": iters, "warmup": warmup,
              "dense_flops_per_s": dense, "rows": rows}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "gpu_bench.json", report)
    table = format_table(report)
    tmp = out / "gpu_bench.md.tmp"
    tmp.write_text(table + "\n")
    os.replace(tmp, out / "gpu_bench.md")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_bench.sh", description="End-to-end GPU latency with torch only "
                                "(r50_fpn / r101_fpn, batch 1 and 8, fp32 and fp16); writes a JSON and a table.")
    p.add_argument("--configs", default="r50_fpn,r101_fpn")
    p.add_argument("--size", default="800x1333", help="frame HxW = test size (short side x max side)")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--precisions", default="fp32,fp16", help="fp32, fp16 (weights in half), fp16-autocast")
    p.add_argument("--device", default="cuda")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--checkpoint", default=None, help="trained weights (default: freshly initialised presets)")
    p.add_argument("--score-thresh", type=float, default=0.0,
                   help="0 (default): every one of the K=100 slots is a detection whose mask is pasted (worst case)")
    p.add_argument("--dense-seconds", type=float, default=1.0)
    p.add_argument("--out", default="outputs/gpu_bench")
    args = p.parse_args(argv)
    h, _, w = args.size.lower().partition("x")
    size = (int(h), int(w or h))
    report = run([c for c in args.configs.split(",") if c], size, [int(b) for b in args.batches.split(",")],
                 [q for q in args.precisions.split(",") if q], args.device, args.iters, args.warmup, args.out,
                 args.checkpoint, args.score_thresh, dense_seconds=args.dense_seconds)
    print(format_table(report))
    print(f"wrote {Path(args.out) / 'gpu_bench.json'} and {Path(args.out) / 'gpu_bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
