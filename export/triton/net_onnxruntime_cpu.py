"""Triton Python-backend `boxinst_net` for CPU-only servers (the tritonserver in the
nvidia-pytriton wheel has no onnxruntime backend): runs 1/model.onnx with ONNX Runtime through
boxinst_serve's OnnxRuntimeEngine. Requests of one dynamic batch with the same padded shape run as
one ONNX batch; a failing group gets error responses and the others are served
(boxinst_serve.serving.steps.run_network_grouped).
Written into the repository by `boxinst export --triton DIR --flavour cpu`."""
import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from boxinst_serve.engines.onnxruntime_engine import OnnxRuntimeEngine
from boxinst_serve.serving import model_parameters, onnxruntime_settings
from boxinst_serve.serving.steps import run_network_grouped


class TritonPythonModel:
    def initialize(self, args):
        settings = onnxruntime_settings(model_parameters(json.loads(args["model_config"])))
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.engine = OnnxRuntimeEngine(path, provider="cpu", **settings)

    def execute(self, requests):
        return run_network_grouped(self.engine, requests, pb_utils)
