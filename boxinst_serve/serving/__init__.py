"""Code that runs inside Triton or starts it: the repository's serving settings and the helpers
the Python-backend steps share (`steps`), the one-process raw-frame pipeline (`fused`), and the
`tritonserver` launcher (`server`).

Importing this package loads only `steps` (numpy/OpenCV): its names are re-exported here because
the `model.py` of exported repositories import them as `boxinst_serve.serving.<name>`."""
from boxinst_serve.serving.steps import (SERVING_FILE, ServingConfig, instance_outputs, mask_format_of,  # noqa: F401
                                         max_pixels_parameter, meta_from_array, meta_to_array, model_parameters,
                                         onnxruntime_settings, prepare_one, respond_each)
from boxinst_serve.protocol import ENSEMBLE_MODEL, MASK_FORMATS, NET_MODEL  # noqa: F401
