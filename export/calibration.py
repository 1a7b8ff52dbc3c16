"""Calibration images for INT8 engines: one reader shared by ONNX Runtime's static quantization
(export/quantize.py) and TensorRT's entropy calibrator (export/tensorrt.py).

Images come from a COCO json (its `images` list; the image folder is `images/` beside the json
unless given) and go through the serving pre-processing (`boxinst_serve.preprocess`): the
network sees at calibration exactly the pixels it will see in production."""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
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


def padded_input_hw(path: Path, cfg: ModelConfig) -> tuple[int, int]:
    """(Hp, Wp) of the network input `prepare_for` makes of one image file under `cfg` (decoded,
    so that EXIF orientation counts as it does at inference)."""
    from boxinst_serve.config import network_input_hw
    from boxinst_serve.preprocess import read_image

    return network_input_hw(cfg, *read_image(path).shape[:2])


@dataclass
class CalibrationImages:
    """Network inputs for calibration: iterating yields uint8 [batch, H, W, 3] arrays (the network
    contract's `images`), each image pre-processed exactly as inference does (`prepare_for`: the
    config's test sizes, resize mode, padding colour, its own size padded to the divisibility).

    same_shape: keep only the images whose padded input has the most common shape (TensorRT
    calibrates at one input shape; padding every image onto one canvas instead would calibrate on
    inputs the engine never sees), so every batch has that shape; otherwise each batch is padded
    to its largest member, as batched in-process inference does. A batch is never padded with
    repeated images: a last partial batch is dropped when a fixed batch size is needed (TensorRT),
    kept otherwise."""

    files: list[Path]
    config: ModelConfig
    batch_size: int = 1
    same_shape: bool = False
    drop_last: bool = False
    shape: tuple[int, int] | None = field(default=None, init=False)  # (Hp, Wp) of every batch when same_shape

    def __post_init__(self) -> None:
        if self.same_shape and self.files:
            shapes = [padded_input_hw(f, self.config) for f in self.files]
            counts = Counter(shapes)
            shape = max(counts, key=lambda hw: (counts[hw], hw))  # the most common; ties: the larger
            kept = [f for f, hw in zip(self.files, shapes) if hw == shape]
            if len(kept) < len(self.files):
                log.info("calibrating at one input shape %dx%d: %d of %d images have it (the others pad to %s)",
                         shape[1], shape[0], len(kept), len(self.files),
                         ", ".join(f"{w}x{h}" for h, w in sorted(set(counts) - {shape})))
            if len(kept) < self.batch_size:
                raise ValueError(f"only {len(kept)} calibration image(s) share one input shape ({shape[1]}x{shape[0]} "
                                 f"after resizing and padding), fewer than the batch of {self.batch_size}: give more "
                                 "images (--calibration-images) or a smaller --opt-batch")
            self.files = kept
            self.shape = shape

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
            batch, _ = prepare_for(cfg, images)  # exactly what the engines see at inference
            yield batch

    def describe(self) -> dict:
        """What calibration saw, for the engine's metadata."""
        return {"images": len(self.files), "batch_size": self.batch_size,
                "shape": list(self.shape) if self.same_shape else None,
                "min_size_test": self.config.min_size_test, "max_size_test": self.config.max_size_test}
