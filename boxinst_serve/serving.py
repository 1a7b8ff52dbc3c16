"""What the Triton steps share with the in-process path: the serving settings written beside
`boxinst_net` by `boxinst export --triton`, the fixed letterbox canvas that lets Triton's dynamic
batcher group requests, and the small per-image metadata passed between steps.

Pure numpy/OpenCV: imported by the Python-backend models in `model_repository/` and by tests."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boxinst_serve.config import CONTRACT_VERSION, ModelConfig, pad_value, padded_size
from boxinst_serve.files import write_json_atomic
from boxinst_serve.preprocess import DEFAULT_MAX_PIXELS, ImageMeta, resize_image

SERVING_FILE = "boxinst_serving.json"  # in <repository>/boxinst_net/
NET_MODEL = "boxinst_net"
ENSEMBLE_MODEL = "boxinst"
MASK_FORMATS = ("rle", "bitmap")


@dataclass(frozen=True)
class ServingConfig:
    """model: the exported network's ModelConfig (class names included); canvas: (h, w) of the
    landscape letterbox canvas (portrait images use (w, h)); max_pixels: decoded-size limit."""

    model: ModelConfig
    canvas: tuple[int, int]
    max_pixels: int = DEFAULT_MAX_PIXELS
    contract_version: str = CONTRACT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"model_config": self.model.to_dict(), "canvas": list(self.canvas), "max_pixels": self.max_pixels,
                "contract_version": self.contract_version}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ServingConfig":
        return cls(model=ModelConfig.from_dict(d["model_config"]), canvas=tuple(d["canvas"]),
                   max_pixels=int(d.get("max_pixels", DEFAULT_MAX_PIXELS)),
                   contract_version=str(d.get("contract_version", CONTRACT_VERSION)))

    def save(self, net_dir: str | os.PathLike) -> Path:
        path = Path(net_dir) / SERVING_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, repository: str | os.PathLike) -> "ServingConfig":
        """From <repository>/boxinst_net/boxinst_serving.json (written by `boxinst export --triton`)."""
        path = Path(repository) / NET_MODEL / SERVING_FILE
        if not path.is_file():
            raise FileNotFoundError(f"'{path}' is missing: write the network into the repository with "
                                    "`boxinst export --checkpoint CKPT --triton REPOSITORY`")
        cfg = cls.from_dict(json.loads(path.read_text()))
        if cfg.contract_version != CONTRACT_VERSION:
            raise ValueError(f"'{path}' has contract version {cfg.contract_version}, this runtime speaks "
                             f"{CONTRACT_VERSION}: export the model again")
        return cfg


def default_canvas(cfg: ModelConfig) -> tuple[int, int]:
    """(h, w) that holds any image resized to min_size_test / max_size_test in landscape."""
    return (padded_size(cfg.min_size_test, cfg.size_divisibility),
            padded_size(cfg.max_size_test, cfg.size_divisibility))


def canvas_for(image_hw: tuple[int, int], canvas: tuple[int, int]) -> tuple[int, int]:
    """The landscape canvas for landscape or square images, its transpose for portrait ones."""
    h, w = image_hw
    ch, cw = canvas
    return (max(ch, cw), min(ch, cw)) if h > w else (min(ch, cw), max(ch, cw))


def letterbox(image: np.ndarray, cfg: ModelConfig, canvas: tuple[int, int]) -> tuple[np.ndarray, ImageMeta]:
    """RGB uint8 [H, W, 3] -> (uint8 [Hc, Wc, 3] resized as in prepare_for and padded at the
    bottom/right onto the canvas with the model's padding colour, its ImageMeta). Same pixels as
    prepare_for, more padding."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {image.dtype} {tuple(image.shape)}")
    r = resize_image(image, cfg.min_size_test, cfg.max_size_test, cfg.resize)
    ch, cw = canvas_for(image.shape[:2], canvas)
    if r.shape[0] > ch or r.shape[1] > cw:
        raise ValueError(f"resized image {r.shape[1]}x{r.shape[0]} does not fit the {cw}x{ch} canvas")
    out = np.empty((ch, cw, 3), dtype=np.uint8)
    out[...] = np.asarray(pad_value(cfg), dtype=np.uint8)
    out[: r.shape[0], : r.shape[1]] = r
    return out, ImageMeta(orig_hw=tuple(image.shape[:2]), resized_hw=tuple(r.shape[:2]))


def meta_to_array(meta: ImageMeta) -> np.ndarray:
    """ImageMeta -> int32 [4] (orig h, orig w, resized h, resized w)."""
    return np.array([*meta.orig_hw, *meta.resized_hw], dtype=np.int32)


def meta_from_array(a: np.ndarray) -> ImageMeta:
    v = [int(x) for x in np.asarray(a).reshape(-1)[:4]]
    return ImageMeta(orig_hw=(v[0], v[1]), resized_hw=(v[2], v[3]))


def mask_format_of(value: Any) -> str:
    """The optional `mask_format` input (BYTES [1] or absent) -> 'rle' or 'bitmap'."""
    if value is None:
        return "rle"
    v = np.asarray(value).reshape(-1)
    if v.size == 0:
        return "rle"
    s = v[0].decode("utf-8", "replace") if isinstance(v[0], bytes) else str(v[0])
    s = s.strip().lower() or "rle"
    if s not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {s!r}")
    return s


def instance_outputs(inst: Any, mask_format: str) -> dict[str, np.ndarray]:
    """Instances -> the served models' outputs by name, batch dimension first (one image):
    num_instances int32 [1, 1], boxes fp32 [1, N, 4], scores fp32 [1, N], classes int32 [1, N],
    masks_rle object (bytes) [1, N], image_size int32 [1, 2], masks uint8 [1, N, H, W] 0/1 when
    mask_format is 'bitmap', else [1, 0, 0, 0]."""
    n = len(inst)
    counts = np.array([r["counts"].encode("ascii") for r in inst.rle], dtype=np.object_)
    masks = inst.masks.astype(np.uint8) if mask_format == "bitmap" else np.zeros((0, 0, 0), dtype=np.uint8)
    return {"num_instances": np.array([[n]], dtype=np.int32),
            "boxes": inst.boxes.astype(np.float32).reshape(1, n, 4),
            "scores": inst.scores.astype(np.float32).reshape(1, n),
            "classes": inst.classes.astype(np.int32).reshape(1, n),
            "masks_rle": counts.reshape(1, n),
            "image_size": np.array([inst.image_size], dtype=np.int32),
            "masks": masks[None]}


def model_parameters(model_config: dict) -> dict[str, str]:
    """A Triton model config's parameters (the config as JSON: initialize()'s
    json.loads(args["model_config"]), or the client's get_model_config(as_json=True)["config"])
    as {key: string_value}. The export writes them (export/triton.py, export/triton_fused.py)."""
    return {k: v.get("string_value", "") for k, v in model_config.get("parameters", {}).items()}


def onnxruntime_settings(params: dict[str, str]) -> dict[str, Any]:
    """{"threads": int (0: ONNX Runtime's default), "spinning": bool} from model_parameters(): how
    the CPU models run ONNX Runtime (spinning unless the parameter says "0" or "false")."""
    return {"threads": int(params.get("intra_op_threads") or 0),
            "spinning": params.get("intra_op_spinning", "1") not in ("0", "false")}


def max_pixels_parameter(params: dict[str, str]) -> int | None:
    """The frame-size limit of a step's config parameter "max_pixels" (None where it is 0 or
    absent: the ServingConfig's limit applies)."""
    return int(params.get("max_pixels") or 0) or None


def respond_each(requests: list, handle, pb_utils, step: str) -> list:
    """The Python-backend steps' execute(): one response per request, `handle(request)` or, if it
    raises, an error response naming the step and the problem, so one bad request never fails the
    others of its dynamic batch."""
    responses = []
    for request in requests:
        try:
            responses.append(handle(request))
        except Exception as e:  # noqa: BLE001 - every failure goes back to its own caller
            responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{step}: {e}")))
    return responses
