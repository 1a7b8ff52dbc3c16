"""From padded network outputs (numpy, any engine) to `Instances` at the original resolution:
rescale boxes, paste stride-4 mask probabilities back (bilinear), threshold, RLE-encode."""
from __future__ import annotations

import cv2
import numpy as np

from boxinst_serve.preprocess import ImageMeta
from boxinst_serve.results import Instances, encode_masks


def paste_masks(masks_u8: np.ndarray, meta: ImageMeta, mask_stride: int = 4,
                threshold: float = 0.5) -> np.ndarray:
    """masks_u8: [N, Hp/s, Wp/s] uint8 probabilities x 255 -> bool [N, H, W] at the original size.

    Bilinear upsampling to the padded input resolution, crop to the resized image, bilinear resize
    to the original size, threshold (SPEC.md, "Inference")."""
    n = masks_u8.shape[0]
    oh, ow = meta.orig_hw
    rh, rw = meta.resized_hw
    out = np.zeros((n, oh, ow), dtype=bool)
    for i in range(n):
        m = masks_u8[i].astype(np.float32) * (1.0 / 255.0)
        up = cv2.resize(m, (m.shape[1] * mask_stride, m.shape[0] * mask_stride), interpolation=cv2.INTER_LINEAR)
        up = up[:rh, :rw]
        if (rh, rw) != (oh, ow):
            up = cv2.resize(up, (ow, oh), interpolation=cv2.INTER_LINEAR)
        out[i] = up > threshold
    return out


def to_instances(outputs: dict[str, np.ndarray], index: int, meta: ImageMeta, mask_stride: int = 4,
                 mask_threshold: float = 0.5, class_names: list[str] | None = None) -> Instances:
    """Slice image `index` of the padded contract outputs and bring it to original pixels."""
    n = int(outputs["num_detections"][index])
    oh, ow = meta.orig_hw
    rh, rw = meta.resized_hw
    boxes = outputs["boxes"][index, :n].astype(np.float32).copy()
    boxes[:, [0, 2]] *= ow / rw
    boxes[:, [1, 3]] *= oh / rh
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, ow)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, oh)
    masks = paste_masks(outputs["masks"][index, :n], meta, mask_stride, mask_threshold)
    inst = Instances(boxes=boxes, scores=outputs["scores"][index, :n].astype(np.float32),
                     classes=outputs["classes"][index, :n].astype(np.int64), rle=encode_masks(masks),
                     image_size=(oh, ow), class_names=list(class_names or []))
    inst._masks = masks
    return inst
