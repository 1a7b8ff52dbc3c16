"""Triton Python-backend step 3: padded network outputs -> instances at the original resolution
(boxinst_serve.postprocess.instances_for, the same code as in-process inference). `masks_rle`
holds COCO RLE counts strings; `masks` is filled (uint8 0/1 [N, H, W]) only when mask_format is
'bitmap', and empty [0, 0, 0] otherwise (boxinst_serve.serving.instance_outputs)."""
from pathlib import Path

import triton_python_backend_utils as pb_utils

from boxinst_serve.postprocess import instances_for
from boxinst_serve.serving import ServingConfig, instance_outputs, mask_format_of, meta_from_array, respond_each


class TritonPythonModel:
    def initialize(self, args):
        self.cfg = ServingConfig.load(Path(args["model_repository"]).parent).model

    def _one(self, request):
        def get(name):
            t = pb_utils.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        fmt = mask_format_of(get("mask_format"))
        outputs = {"num_detections": get("det_num").reshape(-1), "boxes": get("det_boxes"),
                   "scores": get("det_scores"), "classes": get("det_classes"), "masks": get("det_masks")}
        inst = instances_for(self.cfg, outputs, 0, meta_from_array(get("meta")))
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(k, v) for k, v in instance_outputs(inst, fmt).items()])

    def execute(self, requests):
        return respond_each(requests, self._one, pb_utils, "postprocess")
