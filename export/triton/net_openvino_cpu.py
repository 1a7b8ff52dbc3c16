"""Triton Python-backend `boxinst_net` that runs the network with OpenVINO on the CPU: 1/model.xml
(the IR of `boxinst export --format openvino`, or its NNCF INT8 with --int8) through boxinst_serve's
OpenVINOEngine (fp32 inference precision, as in process). Requests of one dynamic batch with the
same padded shape run as one batch (boxinst_serve.serving.steps.run_network_grouped).
Written into the repository by `boxinst export --triton DIR --flavour openvino`; NVIDIA's container
has a native `openvino` backend as well (docs/deployment.md says what was run where)."""
import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from boxinst_serve.engines.openvino_engine import OpenVINOEngine
from boxinst_serve.serving import model_parameters, onnxruntime_settings
from boxinst_serve.serving.steps import run_network_grouped


class TritonPythonModel:
    def initialize(self, args):
        threads = onnxruntime_settings(model_parameters(json.loads(args["model_config"])))["threads"]
        path = Path(args["model_repository"]) / args["model_version"] / "model.xml"
        self.engine = OpenVINOEngine(path, threads=threads)

    def execute(self, requests):
        return run_network_grouped(self.engine, requests, pb_utils)
