"""Inference engines: one protocol, several runtimes, the same inputs and outputs.

Every engine is called as `engine(images)` with `images` a uint8 numpy array [B, H, W, 3] RGB
(H and W multiples of 32) and returns a dict of numpy arrays named as in the network contract
(`boxinst_serve.config.OUTPUT_NAMES`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from boxinst_serve.config import ModelConfig


class Engine(Protocol):
    config: ModelConfig

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


def check_images(images: np.ndarray, divisibility: int) -> None:
    """Raise ValueError naming the problem unless images is uint8 [B, H, W, 3] with H, W % d == 0."""
    if not isinstance(images, np.ndarray):
        raise ValueError(f"images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be [B, H, W, 3], got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch")
    if images.shape[1] % divisibility or images.shape[2] % divisibility:
        raise ValueError(f"image height and width must be multiples of {divisibility}, got "
                         f"{images.shape[1]}x{images.shape[2]} (pad with boxinst_serve.preprocess.prepare_for)")


def load_engine(path: str | os.PathLike, device: str = "cpu", **kwargs) -> Engine:
    """Choose the engine by file type: .pt checkpoint -> TorchEngine, .onnx -> OnnxRuntimeEngine,
    .plan/.engine -> TensorRTEngine. `device` "cuda" picks the GPU where the runtime has one."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        from boxinst_serve.engines.torch_engine import TorchEngine

        return TorchEngine(path, device=device, **kwargs)
    if suffix == ".onnx":
        from boxinst_serve.engines.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, provider="cuda" if device.startswith("cuda") else "cpu", **kwargs)
    if suffix in (".plan", ".engine"):
        from boxinst_serve.engines.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(path, **kwargs)
    raise ValueError(f"don't know how to run '{path}': expected a .pt checkpoint, .onnx model or .plan engine")
