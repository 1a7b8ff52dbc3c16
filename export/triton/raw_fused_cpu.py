"""Triton Python-backend `boxinst_raw_fused` for CPU-only servers: a raw RGB uint8 frame in, the
`boxinst_raw` ensemble's outputs out, its three steps run in this one process
(boxinst_serve.fused.FramePipeline: check_frame, prepare_one, ONNX Runtime on boxinst_net's
model.onnx, instances_for). A bad frame gets an error response naming the problem; the others
are served. Written into the repository by `boxinst export --triton DIR --flavour cpu`."""
import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from boxinst_serve.serving.fused import FramePipeline
from boxinst_serve.serving import (instance_outputs, mask_format_of, max_pixels_parameter, model_parameters,
                                   onnxruntime_settings, respond_each)


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(json.loads(args["model_config"]))
        self.pipeline = FramePipeline.from_repository(Path(args["model_repository"]).parent,
                                                      **onnxruntime_settings(params),
                                                      max_pixels=max_pixels_parameter(params))

    def _one(self, request):
        fmt = pb_utils.get_input_tensor_by_name(request, "mask_format")
        fmt = mask_format_of(None if fmt is None else fmt.as_numpy())
        inst = self.pipeline(pb_utils.get_input_tensor_by_name(request, "image").as_numpy())
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(k, v) for k, v in instance_outputs(inst, fmt).items()])

    def execute(self, requests):
        return respond_each(requests, self._one, pb_utils, "boxinst_raw_fused")
