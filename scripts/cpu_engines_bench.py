"""The CPU engines side by side on one exported model, one image, in one run: ONNX Runtime fp32
(and its INT8 graph if there), OpenVINO fp32, OpenVINO at its CPU default precision (bf16 where the
CPU has it), and OpenVINO INT8 (NNCF), the last also with oneDNN held to AVX2 (ONEDNN_MAX_CPU_ISA,
which OpenVINO's CPU plugin honours: no VNNI), so both CPU kinds are measured on a VNNI machine.

    python scripts/cpu_engines_bench.py DIR [--size 384x512] [--threads 2] [--iters 20] [--rounds 3]
        [--image shapes.png]

DIR holds what `boxinst export --format openvino --int8 --calibration ...` writes (model.onnx,
model.xml, model_int8.xml; model_int8.onnx from `--format onnx --int8` is used where present).
Each variant runs in its own process (an ISA cap is read at start), the variants in turn for
--rounds rounds, so that each round sees the machine's load alike; it prints each variant's p50
over all rounds (ms, the engine call: the network with its in-graph NMS and masks, on one
uint8 [1, H, W, 3] image) and the detections it found. docs/benchmarks.md has its figures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (engine, file, extra environment)
VARIANTS = {
    "onnxruntime fp32": ("onnxruntime", "model.onnx", {}),
    "onnxruntime int8": ("onnxruntime", "model_int8.onnx", {}),
    "openvino fp32": ("openvino", "model.xml", {}),
    "openvino default precision": ("openvino-default", "model.xml", {}),
    "openvino int8": ("openvino", "model_int8.xml", {}),
    "openvino int8, AVX2 (no VNNI)": ("openvino", "model_int8.xml", {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    "openvino fp32, AVX2": ("openvino", "model.xml", {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
}


def _child(args: argparse.Namespace) -> None:
    """Time one variant: prints {"times_ms": [...], "detections": n} as one JSON line."""
    import time

    import cv2
    import numpy as np

    sys.path.insert(0, str(ROOT))
    h, w = (int(v) for v in args.size.split("x"))
    image = cv2.cvtColor(cv2.imread(args.image), cv2.COLOR_BGR2RGB) if args.image else None
    if image is None:
        image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    batch = np.ascontiguousarray(cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)[None])
    if args.engine == "onnxruntime":
        from boxinst_serve.engines.onnxruntime_engine import OnnxRuntimeEngine

        engine = OnnxRuntimeEngine(args.path, provider="cpu", threads=args.threads)
    else:
        from boxinst_serve.engines.openvino_engine import OpenVINOEngine

        # openvino-default: the CPU plugin's own precision (bf16 where the CPU has it)
        engine = OpenVINOEngine(args.path, threads=args.threads,
                                precision=None if args.engine == "openvino-default" else "f32")
    for _ in range(3):
        out = engine(batch)
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        out = engine(batch)
        times.append((time.perf_counter() - t0) * 1000)
    print(json.dumps({"times_ms": times, "detections": int(np.asarray(out["num_detections"]).reshape(-1)[0])}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--size", default="384x512", help="HxW of the network input")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--image", default=None, help="an image to resize to --size (default: random pixels)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from boxinst_serve.measure import machine_description

    folder = Path(args.dir)
    todo = {name: v for name, v in VARIANTS.items() if (folder / v[1]).exists()}
    times: dict[str, list[float]] = {name: [] for name in todo}
    dets: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, (engine, file, env) in todo.items():
            cmd = [sys.executable, __file__, "--child", "--engine", engine, "--path", str(folder / file), "--size",
                   args.size, "--threads", str(args.threads), "--iters", str(args.iters)]
            if args.image:
                cmd += ["--image", args.image]
            out = subprocess.run(cmd, env={**os.environ, **env}, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            times[name] += result["times_ms"]
            dets[name] = result["detections"]
    print(f"machine: {machine_description()}; input {args.size}, {args.threads} threads, "
          f"{args.rounds} rounds x {args.iters} calls")
    base = float(np.median(times.get("openvino fp32") or times[next(iter(times))]))
    print("| variant | p50 ms | vs openvino fp32 | detections |\n|---|---|---|---|")
    for name, t in times.items():
        p50 = float(np.median(t))
        print(f"| {name} | {p50:.1f} | {base / p50:.2f}x | {dets[name]} |")


if __name__ == "__main__":
    main()
