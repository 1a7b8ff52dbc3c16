"""BoxInst mask losses (projection + colour-similarity pairwise term) and helpers.

All functions are pure (no ``nn.Module``, no state). Conventions follow
``/work/shared/SPEC.md`` ("BoxInst mask losses") and the BoxInst paper,
Eqs. 3-8:

* mask logits live at stride 4 of the padded input image; box bitmasks and
  (fully supervised mode) GT masks are brought to that resolution by sampling
  ``[start::stride, start::stride]`` with ``start = stride // 2``;
* the colour similarity of an edge (pixel ``i``, dilated neighbour ``j``) is
  ``exp(-||lab_i - lab_j||_2 / theta)`` computed on the average-pooled image;
* the pairwise loss is ``-log P(same label)`` averaged over the edges with
  ``S >= tau`` whose centre pixel lies inside the box bitmask.

Neighbour order everywhere is ``F.unfold`` order (row-major over the
``k x k`` window) with the centre entry removed, i.e. ``k*k - 1`` channels.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "dice_loss",
    "projection_loss",
    "rgb_to_lab",
    "color_similarity",
    "pairwise_loss",
    "boxes_to_bitmasks",
    "downsample_masks",
    "image_color_similarity",
    "valid_pixel_mask",
    "pairwise_warmup_factor",
]


# --------------------------------------------------------------------------- #
# Dice / projection term (Eq. 3)
# --------------------------------------------------------------------------- #
def dice_loss(scores: Tensor, targets: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-instance dice loss.

    Args:
        scores: ``[N, ...]`` float predictions (probabilities).
        targets: ``[N, ...]`` float targets, same shape as ``scores``.
        eps: added to the denominator.

    Returns:
        ``[N]``: ``1 - 2 * sum(x * t) / (sum(x^2) + sum(t^2) + eps)``, sums over
        all non-batch dims.
    """
    x = scores.reshape(scores.shape[0], -1) if scores.numel() else scores.reshape(0, 1)
    t = targets.reshape(x.shape).to(x.dtype)
    intersection = (x * t).sum(dim=1)
    union = (x * x).sum(dim=1) + (t * t).sum(dim=1) + eps
    return 1.0 - 2.0 * intersection / union


def projection_loss(mask_logits: Tensor, box_masks: Tensor) -> Tensor:
    """Box projection loss (paper Eq. 3), per instance.

    Args:
        mask_logits: ``[N, 1, H, W]`` mask logits.
        box_masks: ``[N, 1, H, W]`` box bitmasks (0/1, any numeric dtype).

    Returns:
        ``[N]``: ``dice(max_y(sigmoid(logits)), max_y(box)) +
        dice(max_x(sigmoid(logits)), max_x(box))``. The caller averages over
        instances.
    """
    scores = mask_logits.sigmoid()
    box = box_masks.to(scores.dtype)
    # max over y (dim H) -> projection on the x axis: [N, 1, W]
    loss_x = dice_loss(scores.max(dim=2)[0], box.max(dim=2)[0])
    # max over x (dim W) -> projection on the y axis: [N, 1, H]
    loss_y = dice_loss(scores.max(dim=3)[0], box.max(dim=3)[0])
    return loss_x + loss_y


# --------------------------------------------------------------------------- #
# Colour space
# --------------------------------------------------------------------------- #
# sRGB (linear) -> XYZ, same matrix as skimage.color.colorconv.xyz_from_rgb.
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
# D65 white point, 2 degree observer (skimage default).
_WHITE_D65 = (0.95047, 1.0, 1.08883)


def rgb_to_lab(images: Tensor) -> Tensor:
    """Convert RGB images to CIE L*a*b* (D65), like ``skimage.color.rgb2lab(img / 255)``.

    Args:
        images: ``[B, 3, H, W]`` RGB, uint8 or float with values in ``0..255``
            (e.g. average-pooled images; non-integer values are fine).

    Returns:
        ``[B, 3, H, W]`` float32 ``(L, a, b)`` with ``L`` in ``0..100``.
        Not meant to be differentiated through.
    """
    rgb = images.to(torch.float32) / 255.0
    # sRGB gamma expansion.
    linear = torch.where(
        rgb > 0.04045, ((rgb + 0.055) / 1.055).clamp(min=0).pow(2.4), rgb / 12.92
    )
    m = torch.tensor(_XYZ_FROM_RGB, dtype=torch.float32, device=rgb.device)
    xyz = torch.einsum("ij,bjhw->bihw", m, linear)
    white = torch.tensor(_WHITE_D65, dtype=torch.float32, device=rgb.device)
    xyz = xyz / white.view(1, 3, 1, 1)
    # f(t): cube root above (6/29)^3, linear part below.
    delta = 6.0 / 29.0
    f = torch.where(
        xyz > delta**3,
        xyz.clamp(min=delta**3).pow(1.0 / 3.0),
        xyz / (3.0 * delta**2) + 4.0 / 29.0,
    )
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    lightness = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return torch.stack([lightness, a, b], dim=1)


# --------------------------------------------------------------------------- #
# Neighbour helpers
# --------------------------------------------------------------------------- #
def _unfold_wo_center(x: Tensor, kernel_size: int, dilation: int) -> Tensor:
    """``[B, C, H, W]`` -> ``[B, C, k*k-1, H, W]`` dilated neighbours (zero padded).

    Neighbour order is ``F.unfold`` order with the centre entry removed.
    """
    assert x.dim() == 4, "expected [B, C, H, W]"
    assert kernel_size % 2 == 1, "kernel_size must be odd"
    b, c, h, w = x.shape
    padding = dilation * (kernel_size - 1) // 2
    unfolded = F.unfold(x, kernel_size=kernel_size, padding=padding, dilation=dilation)
    unfolded = unfolded.reshape(b, c, kernel_size * kernel_size, h, w)
    centre = kernel_size * kernel_size // 2
    return torch.cat([unfolded[:, :, :centre], unfolded[:, :, centre + 1 :]], dim=2)


def _in_image_neighbours(h: int, w: int, kernel_size: int, dilation: int,
                         device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[1, k*k-1, H, W]``: 1 where the neighbour lies inside the ``H x W`` grid."""
    ones = torch.ones(1, 1, h, w, device=device, dtype=dtype)
    return _unfold_wo_center(ones, kernel_size, dilation)[:, 0]


# --------------------------------------------------------------------------- #
# Colour similarity (Eq. 7)
# --------------------------------------------------------------------------- #
def color_similarity(
    lab: Tensor,
    valid: Optional[Tensor] = None,
    kernel_size: int = 3,
    dilation: int = 2,
    theta: float = 2.0,
) -> Tensor:
    """Colour similarity of every pixel with its dilated neighbours (Eq. 7).

    Args:
        lab: ``[B, 3, H, W]`` colour vectors (L*a*b*).
        valid: optional ``[B, 1, H, W]`` bool or 0/1 float; pixels that are not
            valid (padding, removed bottom rows) take part in no edge.
        kernel_size: odd window size ``k``.
        dilation: window dilation.
        theta: temperature ``theta`` of Eq. 7.

    Returns:
        ``[B, k*k-1, H, W]`` float: ``S = exp(-||c_i - c_j||_2 / theta)`` for
        centre ``i`` and neighbour ``j`` (F.unfold order, centre removed);
        0 where the centre or the neighbour is invalid or the neighbour lies
        outside the image.
    """
    lab = lab.to(torch.float32)
    b, _, h, w = lab.shape
    neighbours = _unfold_wo_center(lab, kernel_size, dilation)  # [B, 3, K, H, W]
    diff = lab[:, :, None] - neighbours
    sim = torch.exp(-torch.linalg.vector_norm(diff, dim=1) / theta)  # [B, K, H, W]

    if valid is None:
        weights = _in_image_neighbours(h, w, kernel_size, dilation, lab.device, lab.dtype)
    else:
        v = valid.reshape(b, 1, h, w).to(lab.dtype)
        weights = _unfold_wo_center(v, kernel_size, dilation)[:, 0] * v  # neighbour * centre
    return sim * weights


# --------------------------------------------------------------------------- #
# Pairwise term (Eqs. 4, 5, 8)
# --------------------------------------------------------------------------- #
def pairwise_loss(
    mask_logits: Tensor,
    similarity: Tensor,
    box_masks: Tensor,
    tau: float,
    kernel_size: int = 3,
    dilation: int = 2,
) -> Tensor:
    """Colour-gated pairwise affinity loss (Eq. 8), averaged over selected edges.

    Args:
        mask_logits: ``[N, 1, H, W]`` mask logits.
        similarity: ``[N, k*k-1, H, W]`` colour similarity, already gathered per
            instance (e.g. ``image_similarity[im_idx]``).
        box_masks: ``[N, 1, H, W]`` box bitmasks (0/1).
        tau: similarity threshold; edges with ``S >= tau`` are positive.
        kernel_size: odd window size ``k`` (must match ``similarity``).
        dilation: window dilation (must match ``similarity``).

    Returns:
        Scalar: sum over edges (centre ``i``, neighbour ``j``) with
        ``S >= tau`` and centre inside the box mask of ``-log P(y_e = 1)``,
        ``log P = logaddexp(ls(x_i) + ls(x_j), ls(-x_i) + ls(-x_j))`` with
        ``ls = logsigmoid``, divided by the number of such edges clamped to
        ``>= 1``. Neighbours outside the ``H x W`` grid are never edges.
        Returns a zero that carries grad when ``N == 0``.
    """
    n, _, h, w = mask_logits.shape
    if n == 0:
        return mask_logits.sum() * 0.0

    log_fg = F.logsigmoid(mask_logits)  # [N, 1, H, W]
    log_bg = F.logsigmoid(-mask_logits)
    log_fg_nb = _unfold_wo_center(log_fg, kernel_size, dilation)[:, 0]  # [N, K, H, W]
    log_bg_nb = _unfold_wo_center(log_bg, kernel_size, dilation)[:, 0]
    log_same = torch.logaddexp(log_fg + log_fg_nb, log_bg + log_bg_nb)  # [N, K, H, W]

    in_image = _in_image_neighbours(h, w, kernel_size, dilation,
                                    mask_logits.device, mask_logits.dtype)
    weights = (similarity >= tau).to(mask_logits.dtype) \
        * box_masks.to(mask_logits.dtype).reshape(n, 1, h, w) * in_image
    return (-log_same * weights).sum() / weights.sum().clamp(min=1.0)


def pairwise_warmup_factor(iteration: int, warmup_iters: int) -> float:
    """Weight of the pairwise term: ``min(iteration / warmup_iters, 1)`` (1 if no warm-up)."""
    if warmup_iters <= 0:
        return 1.0
    return min(float(iteration) / float(warmup_iters), 1.0)


# --------------------------------------------------------------------------- #
# Targets at the mask resolution
# --------------------------------------------------------------------------- #
def boxes_to_bitmasks(boxes: Tensor, height: int, width: int, stride: int = 4) -> Tensor:
    """Box bitmasks at the mask-output resolution.

    The full-resolution bitmask has ones on
    ``[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1]`` (truncated coords) and is
    sampled ``[start::stride, start::stride]`` with ``start = stride // 2``;
    only the sampled cells are computed (vectorised, no loop over boxes).

    Args:
        boxes: ``[N, 4]`` float ``(x0, y0, x1, y1)`` in input pixels of the
            padded ``height x width`` image.
        height, width: padded image size (divisible by ``stride`` in practice).
        stride: mask output stride.

    Returns:
        ``[N, 1, height // stride, width // stride]`` float 0/1 (exactly
        ``len(range(start, height, stride))`` rows, the same when divisible).
    """
    start = stride // 2
    device = boxes.device
    b = boxes.reshape(-1, 4).to(torch.float32).trunc().long()
    x0 = b[:, 0].clamp(min=0)
    y0 = b[:, 1].clamp(min=0)
    x1, y1 = b[:, 2], b[:, 3]
    ys = torch.arange(start, height, stride, device=device)
    xs = torch.arange(start, width, stride, device=device)
    in_y = (ys[None, :] >= y0[:, None]) & (ys[None, :] <= y1[:, None])  # [N, h]
    in_x = (xs[None, :] >= x0[:, None]) & (xs[None, :] <= x1[:, None])  # [N, w]
    masks = in_y[:, :, None] & in_x[:, None, :]
    return masks[:, None].to(torch.float32)


def downsample_masks(masks: Tensor, stride: int = 4) -> Tensor:
    """Sample full-resolution GT masks like :func:`boxes_to_bitmasks`.

    Args:
        masks: ``[N, H, W]`` uint8 / bool / float masks on the padded image.
        stride: mask output stride.

    Returns:
        ``[N, 1, H // stride, W // stride]`` float, ``masks[:, start::stride,
        start::stride]`` with ``start = stride // 2``.
    """
    start = stride // 2
    return masks[:, None, start::stride, start::stride].to(torch.float32)


# --------------------------------------------------------------------------- #
# Image-level colour similarity
# --------------------------------------------------------------------------- #
def valid_pixel_mask(
    image_sizes: Tensor,
    orig_heights: Union[Sequence[int], Tensor],
    padded_h: int,
    padded_w: int,
    bottom_pixels_removed: int = 10,
) -> Tensor:
    """Pixels of the padded batch that may take part in colour-similarity edges.

    Args:
        image_sizes: ``[B, 2]`` int, resized (pre-padding) ``(h, w)`` per image.
        orig_heights: ``[B]`` original image heights (list or tensor).
        padded_h, padded_w: padded batch size.
        bottom_pixels_removed: rows removed at the bottom of the *original*
            image; scaled to the resized image as
            ``round(bottom_pixels_removed * h / orig_h)``.

    Returns:
        ``[B, padded_h, padded_w]`` bool: True inside the resized image except
        its scaled bottom rows; False on padding.
    """
    sizes = torch.as_tensor(image_sizes).reshape(-1, 2).long().cpu()
    orig = torch.as_tensor(orig_heights, dtype=torch.float64).reshape(-1).cpu()
    hs, ws = sizes[:, 0], sizes[:, 1]
    removed = torch.round(bottom_pixels_removed * hs.double() / orig).long().clamp(min=0)
    keep_h = (hs - removed).clamp(min=0)
    ys = torch.arange(padded_h)
    xs = torch.arange(padded_w)
    rows = ys[None, :] < keep_h[:, None]  # [B, H]
    cols = xs[None, :] < ws[:, None]  # [B, W]
    out = rows[:, :, None] & cols[:, None, :]
    if isinstance(image_sizes, Tensor):
        out = out.to(image_sizes.device)
    return out


def image_lab(images: Tensor, stride: int = 4) -> Tensor:
    """``[B, H, W, 3]`` uint8 RGB -> ``[B, 3, H // stride, W // stride]`` L*a*b* of the image
    average-pooled with kernel = stride = ``stride`` (the pooled float values, not re-quantised):
    the colours the box-only losses compare."""
    x = images.permute(0, 3, 1, 2).to(torch.float32)  # [B, 3, H, W]
    return rgb_to_lab(F.avg_pool2d(x, kernel_size=stride, stride=stride))


def image_color_similarity(
    images: Tensor,
    valid: Tensor,
    stride: int = 4,
    kernel_size: int = 3,
    dilation: int = 2,
    theta: float = 2.0,
    lab: Optional[Tensor] = None,
) -> Tensor:
    """Colour similarity of a padded image batch at the mask-output resolution.

    The image is average-pooled (kernel = stride = ``stride``), converted to
    L*a*b* (the pooled float values are used as they are, not re-quantised),
    ``valid`` is sampled ``[start::stride, start::stride]`` and
    :func:`color_similarity` is applied.

    Args:
        images: ``[B, H, W, 3]`` uint8 RGB padded batch (H, W divisible by
            ``stride``), before normalisation.
        valid: ``[B, H, W]`` bool, False on padding and removed bottom rows.
        stride, kernel_size, dilation, theta: see :func:`color_similarity`.
        lab: ``image_lab(images, stride)`` where the caller has it already.

    Returns:
        ``[B, k*k-1, H // stride, W // stride]`` float similarity, shared by
        all instances of an image.
    """
    start = stride // 2
    lab = image_lab(images, stride) if lab is None else lab
    v = valid[:, None, start::stride, start::stride]
    v = v[:, :, : lab.shape[2], : lab.shape[3]]
    return color_similarity(lab, v, kernel_size=kernel_size, dilation=dilation, theta=theta)
