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


# Which files each engine runs, and the engine a file gets by default (its suffix).
ENGINE_SUFFIXES = {
    "torch": (".pt", ".pth"),
    "onnxruntime": (".onnx",),
    "openvino": (".onnx", ".xml"),
    "tensorrt": (".plan", ".engine"),
}
DEFAULT_ENGINE = {".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".xml": "openvino",
                  ".plan": "tensorrt", ".engine": "tensorrt"}


def engine_for(path: str | os.PathLike, engine: str | None = None) -> str:
    """The engine that runs `path`: `engine` where given (ValueError if it cannot run that file type),
    else the file type's default (.pt torch, .onnx onnxruntime, .xml openvino, .plan tensorrt)."""
    suffix = Path(path).suffix.lower()
    if engine in (None, "auto"):
        if suffix not in DEFAULT_ENGINE:
            raise ValueError(f"don't know how to run '{path}': expected a .pt checkpoint, .onnx model, OpenVINO .xml "
                             f"IR or .plan engine")
        return DEFAULT_ENGINE[suffix]
    if engine not in ENGINE_SUFFIXES:
        raise ValueError(f"unknown engine {engine!r}: use auto, {', '.join(ENGINE_SUFFIXES)}")
    if suffix not in ENGINE_SUFFIXES[engine]:
        runs = " or ".join(ENGINE_SUFFIXES[engine])
        raise ValueError(f"the {engine} engine runs {runs} files, not '{path}'"
                         + (": export the checkpoint first (`boxinst export --format onnx` or `--format openvino`)"
                            if suffix in (".pt", ".pth") else ""))
    return engine


def load_engine(path: str | os.PathLike, device: str = "cpu", engine: str | None = None, **kwargs) -> Engine:
    """The engine for `path`: `engine` ("torch", "onnxruntime", "openvino", "tensorrt"), or by file type
    where it is None or "auto": .pt checkpoint -> TorchEngine, .onnx -> OnnxRuntimeEngine, .xml (OpenVINO
    IR) -> OpenVINOEngine, .plan/.engine -> TensorRTEngine; an .onnx runs on OpenVINO with
    engine="openvino". `device` "cuda" picks the GPU where the runtime has one."""
    path = Path(path)
    name = engine_for(path, engine)
    if name == "torch":
        from boxinst_serve.engines.torch_engine import TorchEngine

        return TorchEngine(path, device=device, **kwargs)
    if name == "onnxruntime":
        from boxinst_serve.engines.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, provider="cuda" if device.startswith("cuda") else "cpu", **kwargs)
    if name == "openvino":
        from boxinst_serve.engines.openvino_engine import OpenVINOEngine

        return OpenVINOEngine(path, device=device, **kwargs)
    from boxinst_serve.engines.tensorrt_engine import TensorRTEngine

    return TensorRTEngine(path, **kwargs)
