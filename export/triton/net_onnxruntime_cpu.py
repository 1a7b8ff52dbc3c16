"""Triton Python-backend `boxinst_net` for CPU-only servers (the tritonserver in the
nvidia-pytriton wheel has no onnxruntime backend): runs 1/model.onnx with ONNX Runtime through
boxinst_serve's OnnxRuntimeEngine. Requests of one dynamic batch with the same padded shape run as
one ONNX batch; a failing group gets error responses and the others are served.
Written into the repository by `boxinst export --triton DIR --flavour cpu`."""
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from boxinst_serve.config import OUTPUT_NAMES
from boxinst_serve.engines.onnxruntime_engine import OnnxRuntimeEngine
from boxinst_serve.serving import model_parameters, onnxruntime_settings


class TritonPythonModel:
    def initialize(self, args):
        settings = onnxruntime_settings(model_parameters(json.loads(args["model_config"])))
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.engine = OnnxRuntimeEngine(path, provider="cpu", **settings)

    def execute(self, requests):
        images = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
        responses = [None] * len(requests)
        groups = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape[1:], []).append(i)
        for idx in groups.values():
            try:
                batch = np.concatenate([images[i] for i in idx]) if len(idx) > 1 else images[idx[0]]
                out = self.engine(batch)
                row = 0
                for i in idx:
                    b = images[i].shape[0]
                    tensors = [pb_utils.Tensor(name, np.ascontiguousarray(
                        out[name][row:row + b].reshape(b, 1) if name == "num_detections" else out[name][row:row + b]))
                        for name in OUTPUT_NAMES]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                    row += b
            except Exception as e:  # noqa: BLE001 - answer every request of the failed group
                for i in idx:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"boxinst_net: {e}"))
        return responses
