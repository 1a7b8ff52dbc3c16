"""From padded network outputs (numpy, any engine) to `Instances` at the original resolution:
rescale boxes, paste stride-4 mask probabilities back (bilinear), threshold, RLE-encode; the masks
are computed and encoded only around each object (dense bitmaps decode lazily from the RLE)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from boxinst_serve.config import ModelConfig
from boxinst_serve.results import Instances

if TYPE_CHECKING:  # only annotations: the GPU check (bench_gpu) imports this module without OpenCV
    from boxinst_serve.preprocess import ImageMeta


def _axis_samples(lo: int, hi: int, n_src: int, scale: float, stride: int):
    """Output pixels lo..hi-1 of one axis -> (i0, i1, frac): where each samples the stride-s map.

    Output pixel o sits at resized-image coordinate (o + 0.5) * scale - 0.5 (half-pixel resize to
    the original size, scale = resized / original), which sits at (that / s) - 0.5 on the
    stride-s map (the aligned-bilinear upsampling of SPEC.md); clamped (replicate border)."""
    o = np.arange(lo, hi, dtype=np.float64)
    src = np.clip(((o + 0.5) * scale - 0.5) / stride - 0.5, 0.0, n_src - 1.0)
    i0 = np.floor(src).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_src - 1)
    return i0, i1, (src - i0).astype(np.float32)


def _output_span(s_lo: int, s_hi: int, n_out: int, scale: float, stride: int) -> tuple[int, int]:
    """Output pixels whose sample point lies within one source pixel of s_lo..s_hi (a superset of
    those that can interpolate a value from them)."""
    def inv(v: float) -> float:
        return ((v + 0.5) * stride + 0.5) / scale - 0.5

    return max(0, int(np.floor(inv(s_lo - 1.0)))), min(n_out, int(np.ceil(inv(s_hi + 1.0))) + 1)


def paste_mask_rois(masks_u8: np.ndarray, meta: ImageMeta, mask_stride: int = 4,
                    threshold: float = 0.5) -> list[tuple[int, int, np.ndarray]]:
    """masks_u8: [N, Hp/s, Wp/s] uint8 probabilities x 255 -> per mask (y0, x0, bool [h, w]): the
    thresholded mask at the original resolution, zero outside that window.

    SPEC.md's steps (aligned-bilinear upsampling to the padded input, crop to the resized image,
    bilinear resize to the original size, threshold) composed into one bilinear sample per pixel,
    and evaluated only where the result can pass the threshold: a bilinear value is a convex
    combination of its four neighbours, so it exceeds the threshold only next to source pixels
    that do. The work is proportional to the object, not to the image."""
    oh, ow = meta.orig_hw
    rh, rw = meta.resized_hw
    sy, sx = rh / oh, rw / ow
    hs, ws = masks_u8.shape[1:]
    cut = threshold * 255.0
    out = []
    for m in masks_u8:
        hot = m > cut
        rows = np.flatnonzero(hot.any(axis=1))
        if rows.size == 0:
            out.append((0, 0, np.zeros((0, 0), dtype=bool)))
            continue
        cols = np.flatnonzero(hot.any(axis=0))
        y0, y1 = _output_span(int(rows[0]), int(rows[-1]), oh, sy, mask_stride)
        x0, x1 = _output_span(int(cols[0]), int(cols[-1]), ow, sx, mask_stride)
        iy0, iy1, fy = _axis_samples(y0, y1, hs, sy, mask_stride)
        ix0, ix1, fx = _axis_samples(x0, x1, ws, sx, mask_stride)
        mf = m.astype(np.float32)
        r = mf[iy0] * (1.0 - fy)[:, None] + mf[iy1] * fy[:, None]  # [h, Ws]
        v = r[:, ix0] * (1.0 - fx) + r[:, ix1] * fx  # [h, w]
        out.append((y0, x0, v > cut))
    return out


def rle_from_roi(y0: int, x0: int, roi: np.ndarray, height: int, width: int) -> list[int]:
    """Uncompressed COCO RLE counts (column-major runs, starting with zeros) of a height x width
    mask that is `roi` at (y0, x0) and zero elsewhere."""
    if roi.size == 0 or not roi.any():
        return [height * width]
    padded = np.zeros((roi.shape[0] + 2, roi.shape[1]), dtype=np.int8)
    padded[1:-1] = roi
    d = np.diff(padded, axis=0).T  # [w, h + 1]: +1 where a run starts, -1 one past its end
    xs, ys = np.nonzero(d)  # column by column, rows ascending: column-major order
    pos = (x0 + xs).astype(np.int64) * height + (y0 + ys)
    # A run that ends at the bottom of one column and restarts at the top of the next is one run.
    same = np.flatnonzero(pos[1:] == pos[:-1])
    if same.size:
        keep = np.ones(pos.size, dtype=bool)
        keep[same] = False
        keep[same + 1] = False
        pos = pos[keep]
    counts = np.diff(np.concatenate(([0], pos, [height * width]))).tolist()
    return counts[:-1] if counts[-1] == 0 else counts  # a mask ending on a 1 has no final zero run


def paste_masks(masks_u8: np.ndarray, meta: ImageMeta, mask_stride: int = 4,
                threshold: float = 0.5) -> np.ndarray:
    """masks_u8: [N, Hp/s, Wp/s] uint8 probabilities x 255 -> bool [N, H, W] at the original size
    (dense; see paste_mask_rois)."""
    oh, ow = meta.orig_hw
    out = np.zeros((masks_u8.shape[0], oh, ow), dtype=bool)
    for i, (y0, x0, roi) in enumerate(paste_mask_rois(masks_u8, meta, mask_stride, threshold)):
        out[i, y0:y0 + roi.shape[0], x0:x0 + roi.shape[1]] = roi
    return out


def encode_rois(rois: list[tuple[int, int, np.ndarray]], height: int, width: int) -> list[dict]:
    """paste_mask_rois output -> compressed COCO RLEs ({"size": [H, W], "counts": str})."""
    if not rois:
        return []
    from pycocotools import mask as mask_utils

    raw = [{"size": [height, width], "counts": rle_from_roi(y0, x0, roi, height, width)} for y0, x0, roi in rois]
    rles = mask_utils.frPyObjects(raw, height, width)
    return [{"size": [height, width], "counts": r["counts"].decode("ascii")} for r in rles]


def to_instances(outputs: dict[str, np.ndarray], index: int, meta: ImageMeta, mask_stride: int = 4,
                 mask_threshold: float = 0.5, class_names: list[str] | None = None,
                 remove_empty_boxes: bool = False) -> Instances:
    """Slice image `index` of the padded contract outputs and bring it to original pixels.
    `remove_empty_boxes`: drop detections whose box, clipped to the image, has no area."""
    n = int(outputs["num_detections"][index])
    oh, ow = meta.orig_hw
    rh, rw = meta.resized_hw
    boxes = outputs["boxes"][index, :n].astype(np.float32).copy()
    boxes[:, [0, 2]] *= ow / rw
    boxes[:, [1, 3]] *= oh / rh
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, ow)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, oh)
    keep = np.arange(n)
    if remove_empty_boxes:
        keep = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    rois = paste_mask_rois(outputs["masks"][index, keep], meta, mask_stride, mask_threshold)
    return Instances(boxes=boxes[keep], scores=outputs["scores"][index, keep].astype(np.float32),
                     classes=outputs["classes"][index, keep].astype(np.int64), rle=encode_rois(rois, oh, ow),
                     image_size=(oh, ow), class_names=list(class_names or []))


def instances_for(cfg: ModelConfig, outputs: dict[str, np.ndarray], index: int, meta: ImageMeta) -> Instances:
    """to_instances with everything the model's config says (mask stride and threshold, class
    names, empty-box removal). What every inference path calls."""
    return to_instances(outputs, index, meta, cfg.mask_out_stride, cfg.mask_threshold, cfg.class_names,
                        cfg.remove_empty_boxes)
