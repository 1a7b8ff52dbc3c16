"""COCO-json dataset for training and evaluation (docs/architecture.md, "Data").

`CocoBoxDataset` reads a COCO json plus an image folder and yields resized samples; `collate`
pads a list of samples into a batch. Supervision modes:

* ``box``: boxes only; segmentations are never read (the json may have none at all).
* ``mask``: every kept annotation has a segmentation (annotations without one are dropped).
* ``mixed``: masks where a segmentation exists, boxes elsewhere (``has_mask`` tells which);
  with ``mask_classes`` only those classes' segmentations are read (the paper's semi-supervised
  split: the other classes are trained from their boxes even where the json has masks).

Malformed annotations are dropped (or clipped to the image) with a count per reason, logged once
at construction and kept in ``num_dropped``; a bad annotation never crashes an epoch.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from boxinst_serve.coco import segmentation_to_rle
from boxinst_serve.config import padded_size, resized_shape
from boxinst_serve.preprocess import read_image

logger = logging.getLogger(__name__)

SUPERVISION_MODES = ("box", "mask", "mixed")

# Reasons counted in `CocoBoxDataset.num_dropped`.
DROP_INVALID_BBOX = "invalid_bbox"
DROP_ZERO_SIZE = "zero_size"
DROP_OUTSIDE_IMAGE = "outside_image"
DROP_UNKNOWN_CATEGORY = "unknown_category"
DROP_CROWD = "crowd"
DROP_UNKNOWN_IMAGE = "unknown_image"
DROP_NO_SEGMENTATION = "no_segmentation"


@dataclass
class _ImageRecord:
    """One image and its kept annotations, in original pixel coordinates."""

    image_id: int
    file_name: str
    height: int
    width: int
    boxes: np.ndarray  # float32 [N, 4] x0, y0, x1, y1, clipped to the image
    labels: np.ndarray  # int64 [N] contiguous labels
    segmentations: list[Any]  # N COCO segmentations (None where absent; all None in box mode)


def _valid_bbox(bbox: Any) -> bool:
    """Whether `bbox` is a sequence of 4 finite numbers."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return False
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)


def _has_segmentation(seg: Any) -> bool:
    """Whether a COCO segmentation value is present and non-empty (polygons or RLE)."""
    if seg is None:
        return False
    if isinstance(seg, dict):
        return "counts" in seg and "size" in seg
    if isinstance(seg, list):
        return any(isinstance(p, list) and len(p) >= 6 for p in seg)
    return False


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons, RLE or uncompressed RLE) to a uint8 mask [H, W] (0/1);
    one without any shape (no polygon of 3 points) is an error."""
    rle = segmentation_to_rle(seg, height, width)
    if rle is None:
        raise ValueError("segmentation has no polygon of at least 3 points")
    mask = mask_utils.decode(rle).astype(np.uint8)
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return mask


class CocoBoxDataset(torch.utils.data.Dataset):
    """Instance segmentation samples from a COCO json and an image folder.

    A key is an int index (test-time: short side ``min_sizes[-1]``, no flip) or a tuple
    ``(index, seed)`` (training: short side drawn uniformly from ``min_sizes`` and horizontal flip
    with probability ``flip_prob``, both from ``np.random.default_rng(seed)``).

    A sample is a dict:
      image     uint8 [H, W, 3] RGB, resized
      boxes     float32 [N, 4] x0, y0, x1, y1 in resized pixels
      labels    int64 [N] contiguous labels 0..C-1 (order of ``category_ids``)
      masks     uint8 [N, H, W] 0/1 (zeros where ``has_mask`` is False), or None in box mode
      has_mask  bool [N]
      image_id  int (COCO id); orig_size (h, w); scale float (resized / original); flipped bool
    """

    def __init__(
        self,
        json_path: str | os.PathLike,
        images_dir: str | os.PathLike | None = None,
        supervision: str = "box",
        min_sizes: Sequence[int] = (800,),
        max_size: int = 1333,
        flip_prob: float = 0.0,
        category_ids: Sequence[int] | None = None,
        mask_classes: Sequence[str] = (),
    ) -> None:
        if supervision not in SUPERVISION_MODES:
            raise ValueError(f"unknown supervision mode {supervision!r}; choose one of {list(SUPERVISION_MODES)}")
        if len(min_sizes) == 0:
            raise ValueError("min_sizes must contain at least one size")
        self.coco_json_path = str(json_path)
        self.images_dir = str(images_dir) if images_dir is not None else str(Path(json_path).parent / "images")
        self.supervision = supervision
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)
        self.flip_prob = float(flip_prob)

        with open(json_path) as f:
            coco = json.load(f)
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in coco.get("categories", [])}
        self.category_ids: list[int] = [int(c) for c in category_ids] if category_ids is not None else sorted(names)
        self.class_names: list[str] = [names.get(c, str(c)) for c in self.category_ids]
        self.category_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.category_ids)}
        # Mixed supervision's class split: only these classes' segmentations are ever read.
        self.mask_category_ids: set[int] | None = None
        if mask_classes:
            unknown = sorted(set(mask_classes) - set(self.class_names))
            if unknown:
                raise ValueError(f"mask classes {unknown} are not categories of '{json_path}' ({self.class_names})")
            self.mask_category_ids = {c for c, n in zip(self.category_ids, self.class_names) if n in mask_classes}

        self.num_dropped: dict[str, int] = {}
        self.num_clipped = 0
        self._records = self._parse(coco)
        self.image_ids: list[int] = [r.image_id for r in self._records]
        self._log_drops()

    def missing_files(self) -> list[str]:
        """Full paths of the image files that do not exist (a cheap check before training)."""
        paths = (os.path.abspath(os.path.join(self.images_dir, r.file_name)) for r in self._records)
        return [p for p in paths if not os.path.isfile(p)]

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every image, as the json gives them."""
        return [(r.height, r.width) for r in self._records]

    def max_instances(self) -> int:
        """The most kept annotations one image has."""
        return max((len(r.labels) for r in self._records), default=0)

    # ---- parsing ---------------------------------------------------------------------------
    def _drop(self, reason: str) -> None:
        self.num_dropped[reason] = self.num_dropped.get(reason, 0) + 1

    def _parse(self, coco: dict[str, Any]) -> list[_ImageRecord]:
        """Images in json order with their valid annotations; counts what it drops."""
        images: dict[int, dict[str, Any]] = {}
        for img in coco.get("images", []):
            images[int(img["id"])] = img
        sizes = {i: self._image_hw(img) for i, img in images.items()}
        per_image: dict[int, list[tuple[list[float], int, Any]]] = {i: [] for i in images}
        for ann in coco.get("annotations", []):
            kept = self._check_annotation(ann, sizes)
            if kept is not None:
                per_image[int(ann["image_id"])].append(kept)
        records = []
        for image_id, img in images.items():
            anns = per_image[image_id]
            boxes = np.array([a[0] for a in anns], dtype=np.float32).reshape(-1, 4)
            labels = np.array([a[1] for a in anns], dtype=np.int64)
            h, w = sizes[image_id]
            records.append(_ImageRecord(image_id, str(img["file_name"]), h, w, boxes, labels, [a[2] for a in anns]))
        return records

    def _image_hw(self, img: dict[str, Any]) -> tuple[int, int]:
        """(height, width) from the json, or from the file when the json lacks them."""
        if "height" in img and "width" in img:
            return int(img["height"]), int(img["width"])
        h, w = read_image(os.path.join(self.images_dir, img["file_name"])).shape[:2]
        return h, w

    def _check_annotation(self, ann: dict[str, Any], sizes: dict[int, tuple[int, int]]) -> tuple[list[float], int, Any] | None:
        """(clipped xyxy box, label, segmentation or None) of a valid annotation, else None (counted).
        `sizes` maps image id -> (height, width)."""
        image_id = ann.get("image_id")
        if not isinstance(image_id, int) or image_id not in sizes:
            return self._drop(DROP_UNKNOWN_IMAGE)
        if ann.get("iscrowd", 0):
            return self._drop(DROP_CROWD)
        category_id = ann.get("category_id")
        if not isinstance(category_id, int) or category_id not in self.category_id_to_label:
            return self._drop(DROP_UNKNOWN_CATEGORY)
        bbox = ann.get("bbox")
        if not _valid_bbox(bbox):
            return self._drop(DROP_INVALID_BBOX)
        x, y, bw, bh = (float(v) for v in bbox)
        if bw <= 0 or bh <= 0:
            return self._drop(DROP_ZERO_SIZE)
        h, w = sizes[image_id]
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + bw, float(w)), min(y + bh, float(h))
        if x >= w or y >= h or x + bw <= 0 or y + bh <= 0:
            return self._drop(DROP_OUTSIDE_IMAGE)
        if x1 <= x0 or y1 <= y0:
            return self._drop(DROP_ZERO_SIZE)
        if (x0, y0, x1, y1) != (x, y, x + bw, y + bh):
            self.num_clipped += 1
        seg = None
        if self.supervision != "box" and (self.mask_category_ids is None or category_id in self.mask_category_ids):
            seg = ann.get("segmentation")
            if not _has_segmentation(seg):
                if self.supervision == "mask":
                    return self._drop(DROP_NO_SEGMENTATION)
                seg = None
        return [x0, y0, x1, y1], self.category_id_to_label[category_id], seg

    def _log_drops(self) -> None:
        if self.num_dropped:
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(self.num_dropped.items()))
            logger.warning("%s: dropped %d annotations (%s)", self.coco_json_path, sum(self.num_dropped.values()), detail)
        if self.num_clipped:
            logger.warning("%s: clipped %d boxes to their image", self.coco_json_path, self.num_clipped)

    # ---- samples ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def _augmentation(self, key: int | tuple[int, int]) -> tuple[int, int, bool]:
        """(index, short side, flip) for a key."""
        if isinstance(key, tuple):
            index, seed = key
            rng = np.random.default_rng(seed)
            min_size = self.min_sizes[int(rng.integers(len(self.min_sizes)))]
            flip = bool(rng.random() < self.flip_prob)
            return int(index), min_size, flip
        return int(key), self.min_sizes[-1], False

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, min_size, flip = self._augmentation(key)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        rec = self._records[index]
        image = read_image(os.path.join(self.images_dir, rec.file_name))
        h, w = image.shape[:2]
        new_h, new_w = resized_shape(h, w, min_size, self.max_size)
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        boxes = rec.boxes * np.array([new_w / w, new_h / h] * 2, dtype=np.float32)
        if self.supervision == "box":
            masks, has_mask = None, np.zeros(len(rec.labels), dtype=bool)
        else:
            masks, has_mask = self._masks(rec, h, w, new_h, new_w)
        if flip:
            image = image[:, ::-1]
            boxes = np.stack([new_w - boxes[:, 2], boxes[:, 1], new_w - boxes[:, 0], boxes[:, 3]], axis=1)
            masks = None if masks is None else masks[:, :, ::-1]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.from_numpy(rec.labels.copy()),
            "masks": None if masks is None else torch.from_numpy(np.ascontiguousarray(masks)),
            "has_mask": torch.from_numpy(has_mask),
            "image_id": rec.image_id,
            "orig_size": (h, w),
            "scale": _resize_scale(h, w, min_size, self.max_size),
            "flipped": flip,
        }

    def _masks(self, rec: _ImageRecord, h: int, w: int, new_h: int, new_w: int) -> tuple[np.ndarray, np.ndarray]:
        """Resized masks uint8 [N, new_h, new_w] (linear resize thresholded at 0.5, zeros where
        absent) and has_mask bool [N]. A segmentation that fails to decode is logged and the
        instance falls back to box supervision (has_mask False) instead of crashing the epoch."""
        masks = np.zeros((len(rec.segmentations), new_h, new_w), dtype=np.uint8)
        has_mask = np.zeros(len(rec.segmentations), dtype=bool)
        for i, seg in enumerate(rec.segmentations):
            if seg is None:
                continue
            try:
                m = decode_segmentation(seg, h, w).astype(np.float32)
            except Exception as e:  # malformed RLE/polygon data in the json
                logger.warning("image %s: undecodable segmentation (%s); using its box only", rec.image_id, e)
                continue
            masks[i] = cv2.resize(m, (new_w, new_h), interpolation=cv2.INTER_LINEAR) >= 0.5
            has_mask[i] = True
        return masks, has_mask


def _resize_scale(h: int, w: int, min_size: int, max_size: int) -> float:
    """The scale factor `resized_shape` applies (resized / original)."""
    scale = min_size / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return float(scale)


def collate(samples: list[dict[str, Any]], size_divisibility: int = 32,
            pad: tuple[int, int, int] = (0, 0, 0)) -> dict[str, Any]:
    """Batch samples of `CocoBoxDataset`.

    Returns a dict:
      images       uint8 [B, Hp, Wp, 3], padded bottom/right with the colour `pad` (the model's,
                   boxinst_serve.config.pad_value); Hp, Wp multiples of size_divisibility
      image_sizes  int64 [B, 2] resized (h, w) before padding
      targets      list of B dicts: boxes float32 [N, 4], labels int64 [N],
                   masks uint8 [N, Hp, Wp] (or None), has_mask bool [N]
      image_ids    list of B ints; orig_sizes list of (h, w); scales list of floats
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    sizes = [tuple(s["image"].shape[:2]) for s in samples]
    hp = padded_size(max(h for h, _ in sizes), size_divisibility)
    wp = padded_size(max(w for _, w in sizes), size_divisibility)
    images = torch.tensor(pad, dtype=torch.uint8).expand(len(samples), hp, wp, 3).clone()
    targets = []
    for i, (s, (h, w)) in enumerate(zip(samples, sizes)):
        images[i, :h, :w] = s["image"]
        masks = s["masks"]
        if masks is not None:
            padded = torch.zeros((masks.shape[0], hp, wp), dtype=torch.uint8)
            padded[:, :h, :w] = masks
            masks = padded
        targets.append({"boxes": s["boxes"], "labels": s["labels"], "masks": masks, "has_mask": s["has_mask"]})
    return {
        "images": images,
        "image_sizes": torch.tensor(sizes, dtype=torch.int64).reshape(-1, 2),
        "targets": targets,
        "image_ids": [s["image_id"] for s in samples],
        "orig_sizes": [tuple(s["orig_size"]) for s in samples],
        "scales": [float(s["scale"]) for s in samples],
    }
