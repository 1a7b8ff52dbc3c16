"""Synthetic "shapes" instance segmentation set in COCO format, with exact masks.

Each image is a textured background (smooth low-frequency colour noise plus pixel noise) with
1-6 solid, slightly shaded shapes of 7 categories, including a ring (a shape with a hole) and
concave outlines (star, cross, crescent), which are exactly the cases where box-only supervision
is hard. Later shapes occlude earlier ones; the ground-truth mask of an instance is its visible
part. The masks are for evaluation only (docs/architecture.md, "Data").

Every painted shape is annotated: a placement that would leave an earlier instance (or itself)
below the visibility thresholds is retried and, failing that, not drawn at all, so the images
contain no unlabelled objects.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from boxinst_serve.files import write_json_atomic

CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle"},
    {"id": 2, "name": "rectangle"},
    {"id": 3, "name": "triangle"},
    {"id": 4, "name": "ring"},
    {"id": 5, "name": "star"},
    {"id": 6, "name": "cross"},
    {"id": 7, "name": "crescent"},
]

MIN_VISIBLE_FRACTION = 0.4
MIN_VISIBLE_AREA = 64
MAX_OBJECTS = 6
SIZE_RANGE = (0.12, 0.5)
MIN_COLOUR_DISTANCE = 40.0  # CIE76 delta E between object colour and local background mean
_PLACEMENT_TRIES = 8
_SUBPIXEL_SHIFT = 4  # cv2 fractional bits for polygon vertices


# ---- shape outlines -------------------------------------------------------------------------
def _transform(points: np.ndarray, cx: float, cy: float, aspect: float, angle: float) -> np.ndarray:
    """Scale local points [K, 2] by (1, aspect), rotate by `angle` (rad), move to (cx, cy)."""
    c, s = np.cos(angle), np.sin(angle)
    x, y = points[:, 0], points[:, 1] * aspect
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _fill_poly(mask: np.ndarray, points: np.ndarray, value: int = 1) -> None:
    """Fill a polygon given as float points [K, 2] with subpixel precision."""
    pts = np.round(points * (1 << _SUBPIXEL_SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [pts], value, lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT)


def _fill_ellipse(mask: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float, value: int) -> None:
    """Fill an ellipse with semi-axes (a, b) rotated by `angle` (rad)."""
    k = 1 << _SUBPIXEL_SHIFT
    center = (int(round(cx * k)), int(round(cy * k)))
    axes = (max(int(round(a * k)), 1), max(int(round(b * k)), 1))
    cv2.ellipse(mask, center, axes, float(np.degrees(angle)), 0, 360, value, -1, cv2.LINE_8, _SUBPIXEL_SHIFT)


def _circle(m: np.ndarray, rng: np.random.Generator, cx: float, cy: float, r: float, asp: float, ang: float) -> None:
    _fill_ellipse(m, cx, cy, r, r * asp, ang, 1)


def _rectangle(m: np.ndarray, rng: np.random.Generator, cx: float, cy: float, r: float, asp: float, ang: float) -> None:
    local = np.array([[-r, -r], [r, -r], [r, r], [-r, r]], dtype=np.float64)
    _fill_poly(m, _transform(local, cx, cy, asp, ang))


def _triangle(m: np.ndarray, rng: np.random.Generator, cx: float, cy: float, r: float, asp: float, ang: float) -> None:
    angles = np.radians(np.array([90.0, 210.0, 330.0]) + rng.uniform(-20.0, 20.0, 3))
    radii = r * rng.uniform(0.8, 1.0, 3)
    local = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    _fill_poly(m, _transform(local, cx, cy, asp, ang))


def _ring(m: np.ndarray, rng: np.random.Generator, cx: float, cy: float, r: float, asp: float, ang: float) -> None:
    asp = max(asp, 0.75)  # keep the hole visible
    inner = rng.uniform(0.45, 0.65)
    _fill_ellipse(m, cx, cy, r, r * asp, ang, 1)
    _fill_ellipse(m, cx, cy, r * inner, r * asp * inner, ang, 0)


def _star(m: np.ndarray, rng: np.random.Generator, cx: float, cy: float, r: float, asp: float, ang: float) -> None:
    n = int(rng.integers(5, 8))
    inner = rng.uniform(0.38, 0.55)
    t = np.arange(2 * n) * np.pi / n
    radii = np.where(np.arange(2 * n) % 2 == 0, r, r * inner)
    local = np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)
    _fill_poly(m, _transform(local, cx, cy, max(asp, 0.7), ang))


def _cross(m: np.ndarray, rng: np.random.Generator, cx: float, cy: float, r: float, asp: float, ang: float) -> None:
    t = r * rng.uniform(0.22, 0.36)
    for local in (
        np.array([[-r, -t], [r, -t], [r, t], [-r, t]], dtype=np.float64),
        np.array([[-t, -r], [t, -r], [t, r], [-t, r]], dtype=np.float64),
    ):
        _fill_poly(m, _transform(local, cx, cy, max(asp, 0.7), ang))


def _crescent(m: np.ndarray, rng: np.random.Generator, cx: float, cy: float, r: float, asp: float, ang: float) -> None:
    # offset + r_cut >= 1.1 r, so the cut always opens the disc: concave, never a hole.
    r_cut = r * rng.uniform(0.75, 0.95)
    offset = r * rng.uniform(0.35, 0.6)
    _fill_ellipse(m, cx, cy, r, r, 0.0, 1)
    _fill_ellipse(m, cx + offset * np.cos(ang), cy + offset * np.sin(ang), r_cut, r_cut, 0.0, 0)


_DRAW: dict[str, Callable[..., None]] = {
    "circle": _circle,
    "rectangle": _rectangle,
    "triangle": _triangle,
    "ring": _ring,
    "star": _star,
    "cross": _cross,
    "crescent": _crescent,
}


def _random_shape(rng: np.random.Generator, size: int, name: str,
                  shrink: float = 1.0) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Full (unoccluded) mask [size, size] uint8 of a random `name` shape, and (cx, cy, diameter).
    `shrink` scales the diameter range (crowded images use smaller shapes)."""
    diameter = rng.uniform(*SIZE_RANGE) * size * shrink
    cx, cy = rng.uniform(0.1, 0.9, 2) * size
    aspect = rng.uniform(0.55, 1.0)
    angle = rng.uniform(0.0, 2 * np.pi)
    mask = np.zeros((size, size), dtype=np.uint8)
    _DRAW[name](mask, rng, cx, cy, diameter / 2, aspect, angle)
    return mask, (cx, cy, diameter)


# ---- colours and texture --------------------------------------------------------------------
def _to_lab(rgb: np.ndarray) -> np.ndarray:
    """RGB colours [K, 3] (0..255) -> CIE LAB [K, 3]."""
    arr = (np.asarray(rgb, dtype=np.float32).reshape(1, -1, 3) / 255.0).astype(np.float32)
    return cv2.cvtColor(arr, cv2.COLOR_RGB2LAB).reshape(-1, 3)


def _pick_colour(rng: np.random.Generator, background_rgb: np.ndarray, tries: int = 24) -> np.ndarray:
    """A random RGB colour [3] at least MIN_COLOUR_DISTANCE (LAB) from `background_rgb`, or the
    farthest of `tries` candidates."""
    candidates = rng.integers(0, 256, size=(tries, 3)).astype(np.float32)
    lab = _to_lab(np.concatenate([background_rgb[None].astype(np.float32), candidates]))
    dist = np.linalg.norm(lab[1:] - lab[0], axis=1)
    ok = np.nonzero(dist >= MIN_COLOUR_DISTANCE)[0]
    return candidates[ok[0] if len(ok) else int(np.argmax(dist))]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background [size, size, 3] float32: base colour plus two octaves of smooth noise."""
    base = rng.uniform(40.0, 215.0, 3).astype(np.float32)
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = base
    for cells, amplitude in ((int(rng.integers(2, 5)), rng.uniform(8.0, 20.0)), (int(rng.integers(8, 17)), rng.uniform(0.5, 2.0))):
        grid = rng.normal(0.0, 1.0, (cells, cells, 3)).astype(np.float32)
        img += cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC) * np.float32(amplitude)
    return img


def _local_mean(img: np.ndarray, mask: np.ndarray, margin: int) -> np.ndarray:
    """Mean colour [3] of `img` over the bounding box of `mask` grown by `margin` pixels."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    y0, y1 = max(ys.min() - margin, 0), min(ys.max() + margin + 1, h)
    x0, x1 = max(xs.min() - margin, 0), min(xs.max() + margin + 1, w)
    return img[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator, cx: float, cy: float, diameter: float) -> None:
    """Paint `colour` with a soft linear shading gradient into `img` where `mask` is set."""
    ys, xs = np.nonzero(mask)
    direction = rng.uniform(0.0, 2 * np.pi)
    amplitude = rng.uniform(4.0, 12.0)
    ramp = ((xs - cx) * np.cos(direction) + (ys - cy) * np.sin(direction)) / max(diameter, 1.0)
    img[ys, xs] = colour[None, :] + (amplitude * ramp)[:, None].astype(np.float32)


# ---- images ---------------------------------------------------------------------------------
def _placement_ok(owner: np.ndarray, mask: np.ndarray, visible: list[int], full: list[int]) -> bool:
    """Whether painting `mask` on top keeps every earlier instance above the visibility limits."""
    covered = owner[mask.astype(bool)]
    lost = np.bincount(covered[covered >= 0], minlength=len(visible)) if len(visible) else np.zeros(0, int)
    for k in range(len(visible)):
        left = visible[k] - int(lost[k])
        if left < MIN_VISIBLE_AREA or left < MIN_VISIBLE_FRACTION * full[k]:
            return False
    return True


def render_image(rng: np.random.Generator, size: int,
                 objects: tuple[int, int] = (1, MAX_OBJECTS)) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Render one synthetic image with between objects[0] and objects[1] shapes attempted (a shape
    that finds no placement within the visibility limits is left out). Above MAX_OBJECTS the
    shapes are drawn smaller, by sqrt(MAX_OBJECTS / objects[1]), so that they fit.

    Returns the RGB uint8 image [size, size, 3] and a list of (category_id, visible mask bool
    [size, size]) in drawing order (later instances occlude earlier ones).
    """
    lo, hi = objects
    if not 1 <= lo <= hi:
        raise ValueError(f"objects must be 1 <= min <= max, got {objects}")
    shrink = min(1.0, float(np.sqrt(MAX_OBJECTS / hi)))
    img = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int16)
    categories: list[int] = []
    visible: list[int] = []
    full: list[int] = []
    for _ in range(int(rng.integers(lo, hi + 1))):
        cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        for _try in range(_PLACEMENT_TRIES):
            mask, (cx, cy, diameter) = _random_shape(rng, size, cat["name"], shrink)
            area = int(mask.sum())
            if area >= MIN_VISIBLE_AREA and _placement_ok(owner, mask, visible, full):
                break
        else:
            continue
        colour = _pick_colour(rng, _local_mean(img, mask, margin=max(int(diameter / 4), 2)))
        _paint(img, mask, colour, rng, cx, cy, diameter)
        m = mask.astype(bool)
        covered = owner[m]
        lost = np.bincount(covered[covered >= 0], minlength=len(visible))
        visible = [v - int(lost[k]) for k, v in enumerate(visible)] + [area]
        full.append(area)
        categories.append(int(cat["id"]))
        owner[m] = len(categories) - 1
    img += rng.normal(0.0, rng.uniform(1.0, 3.0), img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    instances = []
    for k, cat_id in enumerate(categories):
        vis = owner == k
        area = int(vis.sum())
        if area >= MIN_VISIBLE_AREA and area >= MIN_VISIBLE_FRACTION * full[k]:
            instances.append((cat_id, vis))
    return image, instances


# ---- COCO writing ---------------------------------------------------------------------------
def mask_to_annotation(mask: np.ndarray, category_id: int, ann_id: int, image_id: int) -> dict[str, Any]:
    """COCO annotation (RLE segmentation, tight float bbox, pixel area) of a bool mask [H, W]."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": int(category_id),
        "bbox": bbox,
        "area": int(mask.sum()),
        "iscrowd": 0,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
    }


def _num_val(num_images: int, val_fraction: float) -> int:
    n_val = int(round(num_images * val_fraction))
    if num_images >= 2:
        n_val = max(n_val, 1)
    return min(n_val, num_images)


def make_shapes(
    out_dir: str | os.PathLike,
    num_images: int,
    seed: int = 0,
    size: int = 320,
    val_fraction: float = 0.2,
    progress: bool = True,
    objects: tuple[int, int] = (1, MAX_OBJECTS),
) -> dict[str, Any]:
    """Write a shapes set: OUT/images/000000.png..., OUT/train.json, OUT/val.json (COCO, RLE masks).
    `objects`: (min, max) shapes attempted per image (see render_image).

    Image i is rendered from `np.random.default_rng([seed, i])`, and the train/val split is a
    seeded permutation, so a seed gives byte-identical json and images. Returns
    {"train": path, "val": path, "images": dir, "num_train": int, "num_val": int}.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    image_records: list[dict[str, Any]] = []
    annotations: list[list[dict[str, Any]]] = []
    next_ann_id = 1
    for i in tqdm(range(num_images), desc="make-shapes", unit="img", disable=not progress):
        image, instances = render_image(np.random.default_rng([seed, i]), size, objects)
        file_name = f"{i:06d}.png"
        if not cv2.imwrite(str(images_dir / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {images_dir / file_name}")
        image_id = i + 1
        image_records.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        anns = []
        for cat_id, mask in instances:
            anns.append(mask_to_annotation(mask, cat_id, next_ann_id, image_id))
            next_ann_id += 1
        annotations.append(anns)

    n_val = _num_val(num_images, val_fraction)
    val_idx = set(np.random.default_rng([seed, 2**31]).permutation(num_images)[:n_val].tolist())
    paths = {}
    for split, keep in (("train", lambda i: i not in val_idx), ("val", lambda i: i in val_idx)):
        idx = [i for i in range(num_images) if keep(i)]
        coco = {
            "info": {"description": "boxinst-serve synthetic shapes", "seed": seed, "size": size,
                     "objects": list(objects)},
            "images": [image_records[i] for i in idx],
            "annotations": [a for i in idx for a in annotations[i]],
            "categories": [dict(c) for c in CATEGORIES],
        }
        paths[split] = out / f"{split}.json"
        write_json_atomic(paths[split], coco)
    return {
        "train": str(paths["train"]),
        "val": str(paths["val"]),
        "images": str(images_dir),
        "num_train": num_images - n_val,
        "num_val": n_val,
    }
