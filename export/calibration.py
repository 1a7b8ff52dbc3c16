"""Calibration images for INT8 engines: one reader shared by ONNX Runtime's static quantization
(export/quantize.py) and TensorRT's entropy calibrator (export/tensorrt.py).

Images come from a COCO json (its `images` list; the image folder is `images/` beside the json
unless given) and go through the serving pre-processing (`boxinst_serve.preprocess`): the
network sees at calibration exactly the pixels it will see in production."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from boxinst_serve.config import ModelConfig

log = logging.getLogger(__name__)
DEFAULT_CALIBRATION_IMAGES = 64


def calibration_files(data_json: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                      num_images: int = DEFAULT_CALIBRATION_IMAGES) -> list[Path]:
    """The image files calibration reads: `num_images` entries of the json's `images` list, spread
    evenly over it in id order (deterministic). Raises ValueError naming the problem when the json
    is not a COCO file with images, FileNotFoundError naming a missing file."""
    path = Path(data_json)
    if not path.is_file():
        raise FileNotFoundError(f"calibration json '{path}' does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"calibration json '{path}' is not valid JSON: {e}") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not images:
        raise ValueError(f"calibration json '{path}' has no images: INT8 calibration needs a COCO json whose "
                         "'images' list names the pictures to calibrate on (e.g. the train.json of your data set)")
    if num_images < 1:
        raise ValueError(f"--calibration-images must be >= 1, got {num_images}")
    try:
        entries = sorted(images, key=lambda im: im["id"])
        names = [im["file_name"] for im in entries]
    except (KeyError, TypeError):
        raise ValueError(f"calibration json '{path}': every entry of 'images' needs an 'id' and a 'file_name'") \
            from None
    if num_images < len(names):
        picks = np.linspace(0, len(names) - 1, num_images).round().astype(int)
        names = [names[i] for i in picks]
    elif num_images > len(names):
        log.info("calibration json '%s' has %d images (fewer than the %d asked): using all", path, len(names),
                 num_images)
    folder = Path(images_dir) if images_dir else path.parent / "images"
    files = [folder / n for n in names]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"calibration image '{f}' (listed in '{path}') does not exist")
    return files


def _onto_canvas(image: np.ndarray, cfg: ModelConfig, canvas: tuple[int, int]) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> uint8 [Hc, Wc, 3]: resized as in serving (shorter side min_size_test,
    longer at most max_size_test, with the config's resize mode), scaled down further only if it
    still does not fit the canvas (a portrait image on a landscape canvas), padded at the
    bottom/right with the model's padding colour (serving.letterbox, on one fixed canvas)."""
    from boxinst_serve.config import pad_value
    from boxinst_serve.preprocess import resize_image

    ch, cw = canvas
    r = resize_image(image, cfg.min_size_test, cfg.max_size_test, cfg.resize)
    if r.shape[0] > ch or r.shape[1] > cw:
        h, w = image.shape[:2]
        s = min(ch / h, cw / w)
        r = resize_image(image, max(1, int(min(h, w) * s)), max(1, int(max(h, w) * s)), cfg.resize)
    out = np.empty((ch, cw, 3), dtype=np.uint8)
    out[...] = np.asarray(pad_value(cfg), dtype=np.uint8)
    out[: r.shape[0], : r.shape[1]] = r
    return out


@dataclass
class CalibrationImages:
    """Network inputs for calibration: iterating yields uint8 [batch, H, W, 3] arrays (the network
    contract's `images`), pre-processed as the model config says (test sizes, resize mode,
    padding colour).

    canvas: None pads each batch to a multiple of size_divisibility (as the in-process engines do);
    (H, W) letterboxes every image onto that fixed canvas (TensorRT calibrates at one shape: its
    calibration profile's opt shape). A batch is never padded with repeated images: a last partial
    batch is dropped when a fixed batch size is needed (TensorRT), kept otherwise."""

    files: list[Path]
    config: ModelConfig
    batch_size: int = 1
    canvas: tuple[int, int] | None = None
    drop_last: bool = False

    @classmethod
    def from_coco(cls, data_json: str | os.PathLike, config: ModelConfig, num_images: int = DEFAULT_CALIBRATION_IMAGES,
                  images_dir: str | os.PathLike | None = None, **kwargs) -> "CalibrationImages":
        return cls(calibration_files(data_json, images_dir, num_images), config, **kwargs)

    def __len__(self) -> int:
        """Number of batches."""
        n = len(self.files)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        from boxinst_serve.preprocess import prepare_for, read_image

        cfg = self.config
        for b in range(len(self)):
            images = [read_image(f) for f in self.files[b * self.batch_size:(b + 1) * self.batch_size]]
            if self.canvas is None:  # exactly what the engines see at inference
                batch, _ = prepare_for(cfg, images)
            else:
                batch = np.stack([_onto_canvas(im, cfg, self.canvas) for im in images])
            yield batch

    def describe(self) -> dict:
        """What calibration saw, for the engine's metadata."""
        return {"images": len(self.files), "batch_size": self.batch_size,
                "canvas": list(self.canvas) if self.canvas else None,
                "min_size_test": self.config.min_size_test, "max_size_test": self.config.max_size_test}
