"""Triton Python-backend step 1: encoded image bytes -> network input padded to its own size
(boxinst_serve.serving.prepare_one, exactly as in-process inference) + metadata.
The work is boxinst_serve's (the same code as in-process inference); a bad request gets an error
response naming the problem and the other requests of the batch are served."""
import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from boxinst_serve.preprocess import decode_image
from boxinst_serve.serving import (ServingConfig, max_pixels_parameter, meta_to_array, model_parameters, prepare_one,
                                   respond_each)


class TritonPythonModel:
    def initialize(self, args):
        repository = Path(args["model_repository"]).parent
        self.serving = ServingConfig.load(repository)
        limit = max_pixels_parameter(model_parameters(json.loads(args["model_config"])))
        self.max_pixels = limit or self.serving.max_pixels

    def _one(self, request):
        data = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
        if data.size != 1:
            raise ValueError(f"'image' must hold exactly one encoded image, got {data.size} elements")
        raw = data[0]
        if not isinstance(raw, (bytes, bytearray)):
            raw = bytes(raw)
        image = decode_image(raw, source="image", max_pixels=self.max_pixels)
        images, meta = prepare_one(image, self.serving.model)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("images", images),
            pb_utils.Tensor("meta", meta_to_array(meta)[None]),
        ])

    def execute(self, requests):
        return respond_each(requests, self._one, pb_utils, "preprocess")
