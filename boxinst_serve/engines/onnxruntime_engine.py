"""ONNX Runtime engine: runs an exported model.onnx (CPU or CUDA execution provider)."""
from __future__ import annotations

import json
import os

import numpy as np

from boxinst_serve.config import INPUT_NAME, OUTPUT_NAMES, ModelConfig
from boxinst_serve.engines import check_images


class OnnxRuntimeEngine:
    """engine(images uint8 [B, H, W, 3]) -> dict of numpy arrays (network contract).

    provider: "cpu" or "cuda"; threads: intra-op threads (0 = ONNX Runtime's default);
    spinning: whether idle intra-op threads busy-wait for the next parallel section (ONNX
    Runtime's default). Spinning threads keep burning a core after run() returns: off where other
    processes need the cores right then (Triton's steps on a CPU server, docs/benchmarks.md)."""

    def __init__(self, path: str | os.PathLike, provider: str = "cpu", threads: int = 0, spinning: bool = True):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = {"cpu": ["CPUExecutionProvider"],
                     "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}.get(provider)
        if providers is None:
            raise ValueError(f"provider must be 'cpu' or 'cuda', got {provider!r}")
        if provider == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("ONNX Runtime has no CUDA provider here (install onnxruntime-gpu on a CUDA machine)")
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        if "model_config" not in meta:
            raise ValueError(f"'{path}' has no boxinst model_config in its metadata: export it with `boxinst export`")
        self.config = ModelConfig.from_json(meta["model_config"])
        self.class_names = json.loads(meta.get("class_names", "[]"))

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        check_images(images, self.config.size_divisibility)
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(images)})
        return dict(zip(OUTPUT_NAMES, outputs))
