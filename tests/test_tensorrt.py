"""TensorRT: a clear message where it cannot run; a real build and parity check where it can
(a CUDA GPU and the tensorrt package), skipped with the reason elsewhere."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from boxinst_serve.cli import main

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(HAS_TRT and _has_cuda(), reason="TensorRT and a GPU are present: the build test runs instead")
def test_tensorrt_export_without_tensorrt_or_gpu_is_a_clear_error(tmp_path, capsys):
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"unused")
    rc = main(["export", "--checkpoint", "unused.pt", "--format", "tensorrt", "--onnx", str(onnx_file),
               "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err or "needs a CUDA GPU" in err


@pytest.mark.skipif(not HAS_TRT, reason="the tensorrt package is not installed (pip install 'boxinst-serve[tensorrt]')")
@pytest.mark.skipif(HAS_TRT and not _has_cuda(), reason="TensorRT needs a CUDA GPU and none is visible")
def test_tensorrt_plan_matches_onnxruntime(tiny_shapes, tmp_path):
    from boxinst_serve.config import lite
    from boxinst_serve.engines import load_engine
    from boxinst_serve.preprocess import prepare_batch, read_image
    from export.onnx import export_onnx
    from export.tensorrt import build_engine
    from training.config import TrainConfig
    from training.trainer import train

    cfg = TrainConfig.scaled(30, batch_size=2, min_sizes=(128,), max_size=160, num_workers=0)
    ckpt = train(lite().replace(min_size_test=128, max_size_test=160), cfg, tiny_shapes["train"], tmp_path / "run",
                 progress=False)
    onnx_path = export_onnx(ckpt, tmp_path / "onnx")
    plan = build_engine(onnx_path, (1, 64, 64), (1, 128, 160), (2, 256, 256))
    images, _ = prepare_batch([read_image(p) for p in sorted(__import__("pathlib").Path(tiny_shapes["images"])
                                                              .glob("*.png"))[:2]], 128, 160)
    a, b = load_engine(onnx_path)(images), load_engine(plan)(images)
    assert np.array_equal(a["num_detections"], b["num_detections"])
    for i, n in enumerate(a["num_detections"]):
        np.testing.assert_allclose(np.sort(a["scores"][i, :n]), np.sort(b["scores"][i, :n]), atol=1e-3)


@pytest.mark.skipif(not HAS_TRT, reason="the tensorrt package is not installed (pip install 'boxinst-serve[tensorrt]')")
@pytest.mark.skipif(HAS_TRT and not _has_cuda(), reason="TensorRT needs a CUDA GPU and none is visible")
def test_tensorrt_int8_plan_is_calibrated_caches_its_calibration_and_agrees_with_fp32(trained_lite, tiny_shapes,
                                                                                      tmp_path):
    from boxinst_serve.engines import load_engine
    from boxinst_serve.preprocess import prepare_batch, read_image
    from export.calibration import CalibrationImages
    from export.onnx import export_onnx
    from export.tensorrt import build_engine

    onnx_path = export_onnx(trained_lite, tmp_path / "onnx")
    cfg = load_engine(onnx_path).config
    images = CalibrationImages.from_coco(tiny_shapes["train"], cfg, num_images=8, same_shape=True, drop_last=True)
    cache = tmp_path / "calibration.cache"
    plan = build_engine(onnx_path, (1, 64, 64), (1, 128, 160), (2, 256, 256), fp16=True, int8=True,
                        calibration=images, calibration_cache=cache)
    assert cache.stat().st_size > 0 and plan.name == "model_int8.plan"
    # A second build reads the cache instead of the images.
    again = build_engine(onnx_path, (1, 64, 64), (1, 128, 160), (2, 256, 256), fp16=True, int8=True,
                         calibration=None, calibration_cache=cache, out_path=tmp_path / "again.plan")
    batch, _ = prepare_batch([read_image(p) for p in images.files[:2]], 128, 160)
    a = load_engine(onnx_path)(batch)
    for b in (load_engine(plan)(batch), load_engine(again)(batch)):
        assert set(b) == set(a) and all(b[k].dtype == a[k].dtype and b[k].shape == a[k].shape for k in a)
        for i in range(len(batch)):  # the strongest detections agree (30-iteration weights: scores are close)
            np.testing.assert_allclose(np.sort(b["scores"][i])[-5:], np.sort(a["scores"][i])[-5:], atol=0.05)
