"""What the Triton steps share with the in-process path: the serving settings written beside
`boxinst_net` by `boxinst export --triton`, the pre-processing of one request (exactly
`prepare_for` on a single image: its own size padded to the size divisibility, never a larger
canvas, docs/architecture.md), and the small per-image metadata passed between steps.

Pure numpy/OpenCV: imported by the Python-backend models in `model_repository/` and by tests."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from boxinst_serve.config import CONTRACT_VERSION, ModelConfig
from boxinst_serve.files import write_json_atomic
from boxinst_serve.protocol import MASK_FORMATS, NET_MODEL
from boxinst_serve.preprocess import DEFAULT_MAX_PIXELS, ImageMeta, prepare_for

SERVING_FILE = "boxinst_serving.json"  # in <repository>/boxinst_net/


@dataclass(frozen=True)
class ServingConfig:
    """model: the exported network's ModelConfig (class names included); max_pixels: the
    decoded-size limit. Contract version 2: each request is padded to its own size (version 1
    letterboxed onto a fixed canvas, which changed the scores: such repositories are refused)."""

    model: ModelConfig
    max_pixels: int = DEFAULT_MAX_PIXELS
    contract_version: str = CONTRACT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"model_config": self.model.to_dict(), "max_pixels": self.max_pixels,
                "contract_version": self.contract_version}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ServingConfig":
        return cls(model=ModelConfig.from_dict(d["model_config"]),
                   max_pixels=int(d.get("max_pixels", DEFAULT_MAX_PIXELS)),
                   contract_version=str(d.get("contract_version", "1")))

    def save(self, net_dir: str | os.PathLike) -> Path:
        path = Path(net_dir) / SERVING_FILE
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def load(cls, repository: str | os.PathLike) -> "ServingConfig":
        """From <repository>/boxinst_net/boxinst_serving.json (written by `boxinst export --triton`);
        a file of another contract version is refused with what to do."""
        path = Path(repository) / NET_MODEL / SERVING_FILE
        if not path.is_file():
            raise FileNotFoundError(f"'{path}' is missing: write the network into the repository with "
                                    "`boxinst export --checkpoint CKPT --triton REPOSITORY`")
        d = json.loads(path.read_text())
        version = str(d.get("contract_version", "1"))
        if version != CONTRACT_VERSION:
            raise ValueError(f"'{path}' has contract version {version}, this runtime speaks {CONTRACT_VERSION}: "
                             "export the model again (`boxinst export --checkpoint CKPT --triton REPOSITORY`)")
        return cls.from_dict(d)


def prepare_one(image: np.ndarray, cfg: ModelConfig) -> tuple[np.ndarray, ImageMeta]:
    """RGB uint8 [H, W, 3] -> (network input uint8 [1, Hp, Wp, 3], its ImageMeta): `prepare_for`
    of the single image, as `boxinst segment` and AdelaiDet pad it. Triton's dynamic batcher then
    groups only requests of the same padded shape (one camera's frames), which changes nothing."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {image.dtype} {tuple(image.shape)}")
    batch, metas = prepare_for(cfg, [image])
    return batch, metas[0]


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


def run_network_grouped(engine, requests: list, pb_utils, step: str = NET_MODEL) -> list:
    """The network step's execute() for an in-process engine (ONNX Runtime, OpenVINO: the cpu and
    openvino flavours' boxinst_net): the requests of one dynamic batch that share a padded shape
    run as one engine batch; a failing group gets error responses naming the step, and the
    others are served. num_detections goes out as [b, 1] (Triton's dims [1])."""
    from boxinst_serve.config import OUTPUT_NAMES

    images = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
    responses = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape[1:], []).append(i)
    for idx in groups.values():
        try:
            batch = np.concatenate([images[i] for i in idx]) if len(idx) > 1 else images[idx[0]]
            out = engine(batch)
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
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{step}: {e}"))
    return responses
