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
