"""An opt-in mask loss for objects with holes, from boxes alone (beyond the paper; off by default).

BoxInst's two terms give an enclosed hole no signal: the projections of a ring are those of a
disc, and the colour-gated pairwise term links the hole only to pixels of its own colour, which the
ring cuts off from the outside of the box. This term gives such pixels a background target:

1. The box's surroundings: the valid pixels in a band of `margin` mask cells around the box.
2. Background-like pixels: those inside the box whose colour is within the similarity threshold
   of some surrounding pixel, S = exp(-min_j ||c_i - c_j|| / theta) >= thresh (the pairwise term's
   similarity, Eq. 7, against the box's surroundings instead of a neighbour).
3. Enclosed: of those, the ones not connected to the box's border through background-like pixels
   (4-connectivity). Background that reaches the border is the pairwise term's business; what is
   left is background seen through a hole of the object.
4. The loss: -log(1 - p) summed over the enclosed pixels, divided by the number of box pixels
   (`hole_loss`; dividing by the number of enclosed pixels instead weighs each of them so much
   that the masks of every category collapse to outlines, docs/results.md).

The targets carry no gradient and use the same pooled L*a*b* image as the pairwise term.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from training.config import HOLE_NORMALIZERS


def enclosed_background(lab: Tensor, box_mask: Tensor, valid: Tensor, margin: int = 2, theta: float = 2.0,
                        thresh: float = 0.1) -> Tensor:
    """One instance's enclosed background.

    Args:
        lab: ``[3, h, w]`` L*a*b* image at the mask resolution (``losses.image_lab``).
        box_mask: ``[h, w]`` bool box bitmask (``losses.boxes_to_bitmasks``).
        valid: ``[h, w]`` bool, False on padding (and removed bottom rows).
        margin: width of the surrounding band in cells; theta, thresh: see the module docstring.

    Returns:
        ``[h, w]`` bool: background-like pixels inside the box that the box's border does not reach.
    """
    out = torch.zeros_like(box_mask, dtype=torch.bool)
    rows = torch.nonzero(box_mask.any(dim=1)).flatten()
    cols = torch.nonzero(box_mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        return out
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    h, w = box_mask.shape
    by0, by1, bx0, bx1 = max(y0 - margin, 0), min(y1 + margin, h), max(x0 - margin, 0), min(x1 + margin, w)
    band = valid[by0:by1, bx0:bx1].clone()
    band[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0] = False
    if not bool(band.any()):
        return out
    surroundings = lab[:, by0:by1, bx0:bx1][:, band].T  # [K, 3]
    inside = lab[:, y0:y1, x0:x1].reshape(3, -1).T  # [hb * wb, 3]
    nearest = torch.cdist(inside.float(), surroundings.float()).min(dim=1).values
    like = (torch.exp(-nearest / theta) >= thresh).reshape(y1 - y0, x1 - x0)
    like &= box_mask[y0:y1, x0:x1] & valid[y0:y1, x0:x1]
    if not bool(like.any()):
        return out
    grid = like.cpu().numpy().astype(np.uint8)
    count, labels = cv2.connectedComponents(grid, connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    enclosed = (labels > 0) & ~np.isin(labels, border)
    out[y0:y1, x0:x1] = torch.from_numpy(enclosed).to(out.device)
    return out


def enclosed_background_targets(lab: Tensor, box_masks: Tensor, image_index: Tensor, valid: Tensor,
                                margin: int = 2, theta: float = 2.0, thresh: float = 0.1) -> Tensor:
    """``enclosed_background`` for N instances: lab ``[B, 3, h, w]``, box_masks ``[N, 1, h, w]``,
    image_index ``[N]`` long, valid ``[B, h, w]`` bool -> ``[N, 1, h, w]`` bool."""
    with torch.no_grad():
        out = [enclosed_background(lab[b], m[0] > 0, valid[b], margin, theta, thresh)
               for m, b in zip(box_masks, image_index.tolist())]
    return torch.stack(out)[:, None] if out else torch.zeros_like(box_masks, dtype=torch.bool)


def hole_loss(mask_logits: Tensor, holes: Tensor, box_masks: Tensor | None = None, normalize: str = "box") -> Tensor:
    """mask_logits ``[N, 1, h, w]``, holes ``[N, 1, h, w]`` bool, box_masks ``[N, 1, h, w]`` ->
    the sum of -log(1 - p) over the hole pixels divided by (normalize) "box": the number of box
    pixels of all N instances (each hole pixel weighs what one pixel pair weighs in the pairwise
    term), or "holes": the number of hole pixels (their mean; measured to collapse every mask to
    an outline, docs/results.md). A zero that carries grad when there are no holes."""
    if normalize not in HOLE_NORMALIZERS:
        raise ValueError(f"normalize must be one of {HOLE_NORMALIZERS}, got {normalize!r}")
    weights = holes.to(mask_logits.dtype)
    total = (-F.logsigmoid(-mask_logits) * weights).sum()
    if normalize == "holes":
        return total / weights.sum().clamp(min=1.0)
    if box_masks is None:
        raise ValueError("normalize='box' needs box_masks")
    return total / box_masks.to(mask_logits.dtype).sum().clamp(min=1.0)
