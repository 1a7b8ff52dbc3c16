"""Reading and writing checkpoints: weights + the ModelConfig that built them.

Checkpoints hold only tensors and plain Python values, so they load with
`torch.load(..., weights_only=True)`: nothing in them is unpickled as code.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from boxinst_serve.config import ModelConfig


def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely. Returns the dict with `model_config` parsed into a ModelConfig."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt file, or one holding pickled objects
        raise ValueError(f"cannot read checkpoint '{path}': {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"'{path}' is not a boxinst checkpoint (needs 'model' and 'model_config')")
    ckpt["model_config"] = ModelConfig.from_dict(ckpt["model_config"])
    return ckpt


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Build the CondInst of a checkpoint and load its weights; returns the module in eval mode."""
    from boxinst_serve.model import build_model

    ckpt = load_checkpoint(path, map_location=device)
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()
