"""The wire protocol between clients and a `boxinst` Triton repository: the model (step) names,
the output tensor names, the mask formats, and the one check of a raw camera frame (RGB uint8
[H, W, 3], sent as is to the `boxinst_raw` ensemble) that the client (before sending) and the
server's `boxinst_preprocess_raw` step (before using one) apply, so both refuse a bad frame with
the same message.

Numpy only: the light client imports it. Each name is spelled here once; the client, the steps,
the server launcher and the exporter read it from here."""
from __future__ import annotations

from typing import Any

import numpy as np

ENSEMBLE_MODEL = "boxinst"  # encoded images in (model_repository/boxinst)
NET_MODEL = "boxinst_net"  # the exported network; its config carries the class names
PREPROCESS_MODEL = "boxinst_preprocess"
POSTPROCESS_MODEL = "boxinst_postprocess"
PREPROCESS_RAW_MODEL = "boxinst_preprocess_raw"
RAW_MODEL = "boxinst_raw"  # the ensemble taking raw frames (model_repository/boxinst_raw)
# The same inputs and outputs in one Python-backend process (pre-processing, ONNX Runtime, post-processing):
# written beside boxinst_net by `boxinst export --flavour cpu` (boxinst_serve.serving.fused).
FUSED_RAW_MODEL = "boxinst_raw_fused"
# Waited for by `boxinst serve`: every repository has these ...
REQUIRED_MODELS = (PREPROCESS_MODEL, NET_MODEL, POSTPROCESS_MODEL, ENSEMBLE_MODEL)
# ... and these where it has them (copies made before the raw ensemble existed do not; the fused
# model only where a `cpu` export wrote it).
OPTIONAL_MODELS = (PREPROCESS_RAW_MODEL, RAW_MODEL, FUSED_RAW_MODEL)

OUTPUTS = ("num_instances", "boxes", "scores", "classes", "masks_rle", "image_size")  # what a request returns
MASK_FORMATS = ("rle", "bitmap")
# The API key of a server started with one (boxinst_serve.serving.security): an HTTP request
# carries it in API_KEY_HEADER; over gRPC Triton 2.51 expects the header with its
# "triton-grpc-protocol-" prefix (measured: it answers "expecting header
# 'triton-grpc-protocol-boxinst-api-key'"). Clients take it from API_KEY_ENV when given none.
API_KEY_HEADER = "boxinst-api-key"
GRPC_API_KEY_HEADER = f"triton-grpc-protocol-{API_KEY_HEADER}"
API_KEY_ENV = "BOXINST_API_KEY"


def check_frame(frame: Any, max_pixels: int | None = None, source: str = "image") -> np.ndarray:
    """An RGB uint8 [H, W, 3] frame, or [1, H, W, 3] as it arrives with Triton's batch dimension
    -> the [H, W, 3] view. Raises ValueError naming what is wrong: type, dtype, dimensions,
    channel count, an empty frame, or more than `max_pixels` pixels."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"{source}: a raw frame must be a numpy array, got {type(frame).__name__}")
    if frame.ndim == 4:
        if frame.shape[0] != 1:
            raise ValueError(f"{source}: one frame per request, got a batch of {frame.shape[0]} "
                             f"(shape {tuple(frame.shape)})")
        frame = frame[0]
    if frame.dtype != np.uint8:
        raise ValueError(f"{source}: frames must be RGB uint8 [H, W, 3], got dtype {frame.dtype} "
                         "(convert with np.clip(x, 0, 255).astype(np.uint8) or scale 16-bit by 1/257)")
    if frame.ndim != 3:
        raise ValueError(f"{source}: frames must be RGB uint8 [H, W, 3], got {frame.ndim} dimensions "
                         f"(shape {tuple(frame.shape)}; stack gray frames to 3 channels)")
    if frame.shape[2] != 3:
        raise ValueError(f"{source}: frames must have 3 channels (RGB), got {frame.shape[2]} "
                         f"(shape {tuple(frame.shape)}; drop alpha with frame[..., :3])")
    h, w = frame.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"{source}: empty frame ({w}x{h} px)")
    if max_pixels is not None and h * w > max_pixels:
        raise ValueError(f"{source}: frame is {w}x{h} px, over the {max_pixels / 1e6:g} MP limit (max_pixels)")
    return frame
