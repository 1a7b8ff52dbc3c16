"""Triton Python-backend step 1 of `boxinst_raw`: a raw RGB uint8 frame -> network input padded
to its own size + metadata (boxinst_serve.serving.prepare_one, exactly as in-process inference). A bad frame gets an
error response naming the problem (boxinst_serve.frames.check_frame) and the others are served."""
import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from boxinst_serve.protocol import check_frame
from boxinst_serve.serving import (ServingConfig, max_pixels_parameter, meta_to_array, model_parameters, prepare_one,
                                   respond_each)


class TritonPythonModel:
    def initialize(self, args):
        repository = Path(args["model_repository"]).parent
        self.serving = ServingConfig.load(repository)
        limit = max_pixels_parameter(model_parameters(json.loads(args["model_config"])))
        self.max_pixels = limit or self.serving.max_pixels

    def _one(self, request):
        frame = check_frame(pb_utils.get_input_tensor_by_name(request, "image").as_numpy(), self.max_pixels)
        images, meta = prepare_one(frame, self.serving.model)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("images", images),
            pb_utils.Tensor("meta", meta_to_array(meta)[None]),
        ])

    def execute(self, requests):
        return respond_each(requests, self._one, pb_utils, "preprocess")
