"""TensorRT engine: runs a plan built by `boxinst export --format tensorrt` (CUDA GPU needed).

Inputs and outputs go through torch CUDA tensors (torch is already a dependency), bound by name
with TensorRT 10's tensor-address API. Verified only where TensorRT and a GPU exist."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from boxinst_serve.config import INPUT_NAME, OUTPUT_NAMES, ModelConfig
from boxinst_serve.engines import check_images


class TensorRTEngine:
    """engine(images uint8 [B, H, W, 3]) -> dict of numpy arrays (network contract)."""

    def __init__(self, path: str | os.PathLike, device: int = 0):
        try:
            import tensorrt as trt
        except ImportError as e:
            raise RuntimeError("TensorRT is not installed: `pip install 'boxinst-serve[tensorrt]'`") from e
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("the TensorRT engine needs a CUDA GPU, and none is visible here")
        path = Path(path)
        cfg_path = path.with_suffix(".json")
        if not cfg_path.exists():
            raise FileNotFoundError(f"'{cfg_path}' (the model config written beside the plan) is missing")
        self.config = ModelConfig.from_json(cfg_path.read_text())
        self._torch = torch
        self.device = torch.device("cuda", device)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load '{path}' (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)
        self._dtypes = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int32): torch.int32,
                        np.dtype(np.float32): torch.float32}
        self._trt = trt

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        check_images(images, self.config.size_divisibility)
        torch, trt = self._torch, self._trt
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        outputs = {}
        for name in OUTPUT_NAMES:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = self._dtypes[np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))]
            outputs[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        with torch.cuda.stream(self.stream):
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outputs.items()}
