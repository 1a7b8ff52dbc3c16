"""The nano preset's candidates (docs/benchmarks.md, "The nano preset"): GFLOPs at 384x512 by the
counter of `boxinst info`, and single-image latency on one thread relative to `lite`, every
candidate in turn within each round (PyTorch: the CondInst module and the whole inference network;
ONNX Runtime: the graph of the project's export, unless --no-onnx). Random weights, random pixels.

    python scripts/nano_candidates.py [--candidates lite,shufflenet_v2] [--rounds 7] [--no-onnx]

Prints a markdown table; the first candidate is the reference (lite by default). Exports take a
minute or two each on a loaded 2-core machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `export` is a top-level package of the repo

from boxinst_serve.config import ModelConfig, lite  # noqa: E402


def _small_head(cfg: ModelConfig, channels: int = 32) -> ModelConfig:
    """FPN, FCOS head and mask branch at `channels`, GroupNorm groups of 4 channels (lite's ratio)."""
    return cfg.replace(fpn_channels=channels, head_channels=channels, head_gn_groups=channels // 4,
                       mask_branch_channels=channels)


CANDIDATES = {
    "lite": lambda: lite(),
    "resnet18_x0.375": lambda: _small_head(lite().replace(backbone_width=0.375)),
    "mobilenet_v3_large": lambda: _small_head(lite().replace(backbone="mobilenet_v3_large")),
    "mobilenet_v3_large_c48": lambda: _small_head(lite().replace(backbone="mobilenet_v3_large"), 48),
    "regnet_x_400mf": lambda: _small_head(lite().replace(backbone="regnet_x_400mf")),
    "shufflenet_v2": lambda: _small_head(lite().replace(backbone="shufflenet_v2_x1_0")),
    "shufflenet_v2_c48": lambda: _small_head(lite().replace(backbone="shufflenet_v2_x1_0"), 48),
    "shufflenet_v2_c64": lambda: _small_head(lite().replace(backbone="shufflenet_v2_x1_0"), 64),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", default=",".join(CANDIDATES), help=f"comma-separated, of {list(CANDIDATES)}")
    p.add_argument("--size", default="384x512", help="input HxW")
    p.add_argument("--rounds", type=int, default=7, help="rounds; the median of all but the first two is reported")
    p.add_argument("--no-onnx", action="store_true", help="PyTorch only (no export)")
    args = p.parse_args()
    torch.set_num_threads(1)
    from torch.utils.flop_counter import FlopCounterMode

    from boxinst_serve.checkpoint import save_atomic
    from boxinst_serve.model import build_model
    from boxinst_serve.model.detect import InferenceModel

    h, w = (int(v) for v in args.size.split("x"))
    x = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    runs, tmp = {}, Path(tempfile.mkdtemp(prefix="nano_candidates_"))
    for name in args.candidates.split(","):
        cfg = CANDIDATES[name]()
        model = build_model(cfg).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        session = None
        if not args.no_onnx:
            import onnxruntime as ort

            from export.onnx import export_onnx

            save_atomic({"model": model.state_dict(), "model_config": cfg.to_dict()}, tmp / f"{name}.pt")
            options = ort.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(export_onnx(tmp / f"{name}.pt", tmp / name)), options,
                                           providers=["CPUExecutionProvider"])
        runs[name] = (counter.get_total_flops() / 1e9, model, InferenceModel(model).eval(), session)
        print(f"{name}: ready", file=sys.stderr, flush=True)
    times: dict[str, dict[str, list[float]]] = {n: {"module": [], "network": [], "onnxruntime": []} for n in runs}
    for _ in range(args.rounds):
        for name, (_, model, net, session) in runs.items():
            with torch.inference_mode():
                for key, fn in (("module", model), ("network", net)):
                    t = time.perf_counter()
                    fn(x)
                    times[name][key].append(time.perf_counter() - t)
            if session is not None:
                t = time.perf_counter()
                session.run(None, {"images": x.numpy()})
                times[name]["onnxruntime"].append(time.perf_counter() - t)
    med = {n: {k: statistics.median(v[2:]) for k, v in d.items() if len(v) > 2} for n, d in times.items()}
    ref = next(iter(runs))
    keys = [k for k in ("module", "network", "onnxruntime") if k in med[ref]]
    print(f"| candidate | GFLOPs at {h}x{w} | " + " | ".join(f"{k} (x {ref})" for k in keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for name, (gflops, *_) in runs.items():
        cells = [f"{med[name][k] / med[ref][k]:.2f} ({med[name][k] * 1000:.0f} ms)" for k in keys]
        print(f"| {name} | {gflops:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
