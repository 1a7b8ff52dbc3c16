"""Shared fixtures: a tiny synthetic shapes set made once per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `training` and `export` are top-level packages of the repo
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> dict:
    """16 images of 128 px (13 train, 3 val) with exact masks."""
    from training.shapes import make_shapes

    out = tmp_path_factory.mktemp("shapes")
    return make_shapes(out, num_images=16, seed=3, size=128, progress=False)


@pytest.fixture(scope="session")
def trained_lite(tiny_shapes, tmp_path_factory) -> Path:
    """A `lite` checkpoint trained for 30 iterations on tiny_shapes: enough to give detections."""
    from boxinst_serve.config import lite
    from training.config import TrainConfig
    from training.trainer import train

    root = tmp_path_factory.mktemp("trained_lite")
    cfg = TrainConfig.scaled(30, batch_size=2, min_sizes=(128,), max_size=160, num_workers=0, log_period=10)
    return train(lite().replace(min_size_test=128, max_size_test=160), cfg, tiny_shapes["train"], root / "run",
                 progress=False)


@pytest.fixture(scope="session")
def lite_onnx(trained_lite, tmp_path_factory) -> Path:
    """trained_lite exported to ONNX, once per session (the video tests, in-process and on Ray)."""
    from export.onnx import export_onnx

    return export_onnx(trained_lite, tmp_path_factory.mktemp("lite_onnx"))
