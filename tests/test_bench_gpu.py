"""The GPU check (scripts/gpu_bench.sh -> boxinst_serve.apps.bench.gpu) runs end to end on the CPU at a
tiny size with OpenCV, pycocotools, ONNX, ONNX Runtime and TensorRT unimportable, as on a bare GPU
machine with only torch/torchvision/numpy; its device-side mask pasting equals the CPU path's."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("cv2", "pycocotools", "onnx", "onnxruntime", "onnxscript", "tensorrt")


@pytest.fixture
def bare_env(tmp_path) -> dict:
    """Environment whose Python cannot import BLOCKED (each shadowed by a module raising ImportError)."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    for name in BLOCKED:
        (shadow / f"{name}.py").write_text(f"raise ImportError('{name} is blocked: the GPU check must not need it')\n")
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(shadow))
    probe = subprocess.run([sys.executable, "-c", "import cv2"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr  # the shadowing works
    return env


def test_gpu_bench_script_runs_on_cpu_with_only_torch(bare_env, tmp_path):
    out = tmp_path / "out"
    cmd = ["bash", str(ROOT / "scripts" / "gpu_bench.sh"), "--device", "cpu", "--configs", "r50_fpn",
           "--size", "64x96", "--batches", "1,2", "--precisions", "fp32,fp16", "--iters", "1", "--warmup", "0",
           "--dense-seconds", "0.05", "--out", str(out)]
    proc = subprocess.run(cmd, env=bare_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_bench.json").read_text())
    rows = report["rows"]
    assert [(r["batch"], r["precision"]) for r in rows] == [(1, "fp32"), (2, "fp32"), (1, "fp16"), (2, "fp16")]
    for r in rows:
        assert r["config"] == "r50_fpn" and r["input_hw"] == [64, 96] and r["frame_hw"] == [64, 96]
        assert r["p50_ms"] > 0 and r["fps"] > 0
        assert r["detections"] == 100  # score threshold 0: every slot is a detection, its mask pasted
        assert r["gflops"] == pytest.approx(rows[0]["gflops"] * r["batch"])
        assert r["efficiency"] > 0
    table = (out / "gpu_bench.md").read_text()
    assert table.count("| r50_fpn |") == 4 and "GFLOPs/image" in table


def test_device_mask_pasting_equals_the_cpu_path():
    import torch

    from boxinst_serve.apps.bench.gpu import paste_masks_on_device
    from boxinst_serve.postprocess import paste_masks
    from boxinst_serve.preprocess import ImageMeta

    rng = np.random.default_rng(0)
    masks = np.zeros((3, 24, 40), dtype=np.uint8)  # stride-4 maps of a 96x160 padded input
    masks[0, 3:12, 5:20] = 255
    masks[1] = rng.integers(0, 256, (24, 40))
    masks[2, 10:22, 30:40] = 200
    meta = ImageMeta(orig_hw=(131, 217), resized_hw=(90, 149))
    expected = paste_masks(masks, meta, 4, 0.5)
    got = paste_masks_on_device(torch.from_numpy(masks), meta.resized_hw, meta.orig_hw, 4, 0.5).numpy()
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
