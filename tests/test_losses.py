"""Tests for training/losses.py (BoxInst mask losses and helpers)."""

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    boxes_to_bitmasks,
    color_similarity,
    dice_loss,
    downsample_masks,
    image_color_similarity,
    pairwise_loss,
    pairwise_warmup_factor,
    projection_loss,
    rgb_to_lab,
    valid_pixel_mask,
)

BIG = 50.0


def _in_image(h, w, k=3, d=2, valid=None):
    """[K, H, W] 1 where the unfold-order neighbour (centre removed) is inside.

    With ``valid`` ([H, W] 0/1), also require the centre and the neighbour valid.
    """
    if valid is None:
        valid = torch.ones(h, w)
    r = d * (k - 1) // 2
    offsets = [(dy, dx) for dy in range(-r, r + 1, d) for dx in range(-r, r + 1, d)]
    offsets.remove((0, 0))
    out = torch.zeros(len(offsets), h, w)
    for c, (dy, dx) in enumerate(offsets):
        for y in range(h):
            for x in range(w):
                if 0 <= y + dy < h and 0 <= x + dx < w:
                    out[c, y, x] = valid[y, x] * valid[y + dy, x + dx]
    return out


# ----------------------------------------------------------------- dice / projection
def test_dice_hand_case():
    scores = torch.tensor([[0.5, 0.5, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    # 1 - 2*0.5 / (0.5 + 1) = 1/3
    assert dice_loss(scores, targets).item() == pytest.approx(1.0 / 3.0, abs=1e-5)


def test_dice_per_instance_shape():
    out = dice_loss(torch.rand(3, 1, 4, 5), torch.rand(3, 1, 4, 5))
    assert out.shape == (3,)


def test_projection_mask_equal_to_box_is_zero():
    box = torch.zeros(1, 1, 8, 8)
    box[..., 2:6, 1:5] = 1
    logits = torch.where(box > 0, BIG, -BIG)
    assert projection_loss(logits, box).item() == pytest.approx(0.0, abs=1e-4)


def test_projection_all_background_is_two():
    box = torch.zeros(2, 1, 8, 8)
    box[0, :, 2:6, 1:5] = 1
    box[1, :, 0:3, 0:8] = 1
    logits = torch.full((2, 1, 8, 8), -BIG)
    out = projection_loss(logits, box)
    assert out.shape == (2,)
    assert torch.allclose(out, torch.full((2,), 2.0), atol=1e-4)


def test_projection_hand_case():
    # scores [[0.5, 1, 0], [0, 0.5, 0]], box [[0, 1, 1], [0, 0, 0]]
    logits = torch.tensor([[0.0, BIG, -BIG], [-BIG, 0.0, -BIG]]).view(1, 1, 2, 3)
    box = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]).view(1, 1, 2, 3)
    # max over y: pred [0.5, 1, 0], box [0, 1, 1] -> 1 - 2*1/(1.25 + 2)
    # max over x: pred [1, 0.5],    box [1, 0]    -> 1 - 2*1/(1.25 + 1)
    expected = (1 - 2 / 3.25) + (1 - 2 / 2.25)
    assert projection_loss(logits, box).item() == pytest.approx(expected, abs=1e-4)


def test_projection_empty():
    out = projection_loss(torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 4, 4))
    assert out.shape == (0,)


# ----------------------------------------------------------------- LAB
@pytest.mark.parametrize(
    "rgb, lab, tol",
    [
        ((255, 255, 255), (100.0, 0.0, 0.0), 0.05),
        ((0, 0, 0), (0.0, 0.0, 0.0), 0.05),
        ((255, 0, 0), (53.24, 80.09, 67.20), 0.5),
        ((0, 255, 0), (87.73, -86.18, 83.18), 0.5),
        ((0, 0, 255), (32.30, 79.19, -107.86), 0.5),
    ],
)
def test_rgb_to_lab_reference_values(rgb, lab, tol):
    img = torch.tensor(rgb, dtype=torch.uint8).view(1, 3, 1, 1)
    out = rgb_to_lab(img)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 1, 1)
    assert torch.allclose(out.view(3), torch.tensor(lab), atol=tol)


def test_rgb_to_lab_mid_grey():
    out = rgb_to_lab(torch.full((1, 3, 1, 1), 128, dtype=torch.uint8)).view(3)
    assert out[0].item() == pytest.approx(53.59, abs=0.5)
    assert abs(out[1].item()) < 0.05 and abs(out[2].item()) < 0.05


def test_rgb_to_lab_dark_grey_uses_linear_parts():
    # value 5 -> linear sRGB 5/255/12.92; Y below (6/29)^3 -> L = 116*Y/(3*(6/29)^2)
    y = 5 / 255 / 12.92
    expected_l = 116.0 * (y / (3 * (6 / 29) ** 2) + 4 / 29) - 16.0
    out = rgb_to_lab(torch.full((1, 3, 1, 1), 5, dtype=torch.uint8)).view(3)
    assert out[0].item() == pytest.approx(expected_l, abs=1e-3)


def test_rgb_to_lab_float_and_uint8_agree():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (2, 3, 4, 5), generator=g, dtype=torch.uint8)
    assert torch.allclose(rgb_to_lab(img), rgb_to_lab(img.float()), atol=1e-5)
    # non-integer float values (average pooled) work and lie in between
    mid = rgb_to_lab(torch.full((1, 3, 1, 1), 127.5))
    lo = rgb_to_lab(torch.full((1, 3, 1, 1), 127.0))
    hi = rgb_to_lab(torch.full((1, 3, 1, 1), 128.0))
    assert lo[0, 0].item() < mid[0, 0].item() < hi[0, 0].item()


# ----------------------------------------------------------------- colour similarity
def test_color_similarity_uniform_image():
    lab = torch.tensor([50.0, 10.0, -5.0]).view(1, 3, 1, 1).expand(1, 3, 5, 6).clone()
    sim = color_similarity(lab)
    assert sim.shape == (1, 8, 5, 6)
    # 1 on edges inside the image, 0 on edges to outside neighbours
    assert torch.allclose(sim[0], _in_image(5, 6), atol=1e-6)


def test_color_similarity_invalid_pixels():
    lab = torch.full((1, 3, 5, 5), 40.0)
    valid = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    valid[0, 0, 2, 2] = False  # centre pixel of the image
    sim = color_similarity(lab, valid)
    # as centre: all 0
    assert torch.all(sim[0, :, 2, 2] == 0)
    # as neighbour: e.g. pixel (0,0) neighbour index 7 = offset (+2,+2) -> (2,2)
    assert sim[0, 7, 0, 0] == 0
    # pixel (2,0): neighbour index 4 = offset (0,+2) -> (2,2)
    assert sim[0, 4, 2, 0] == 0
    # unaffected edge stays 1: (0,0) index 4 -> (0,2)
    assert sim[0, 4, 0, 0] == pytest.approx(1.0)
    # float 0/1 valid gives the same
    assert torch.equal(sim, color_similarity(lab, valid.float()))
    # number of zeroed in-image edges: 8 as centre + 8 as neighbour
    zeroed = (_in_image(5, 5) - sim[0]).sum().item()
    assert zeroed == pytest.approx(16.0)


def test_color_similarity_two_colours_hand():
    lab = torch.zeros(1, 3, 4, 6)
    lab[0, :, :, :3] = torch.tensor([50.0, 0.0, 0.0]).view(3, 1, 1)
    lab[0, :, :, 3:] = torch.tensor([53.0, 4.0, 0.0]).view(3, 1, 1)  # distance 5
    sim = color_similarity(lab, theta=2.0)
    across = math.exp(-5.0 / 2.0)
    # index 4 = offset (0,+2): column 1 -> 3 crosses, column 0 -> 2 does not
    assert sim[0, 4, 1, 1].item() == pytest.approx(across, rel=1e-5)
    assert sim[0, 4, 1, 0].item() == pytest.approx(1.0)
    # index 3 = offset (0,-2): column 4 -> 2 crosses, symmetric value
    assert sim[0, 3, 1, 4].item() == pytest.approx(across, rel=1e-5)
    # index 7 = offset (+2,+2): row 0 col 2 -> row 2 col 4 crosses
    assert sim[0, 7, 0, 2].item() == pytest.approx(across, rel=1e-5)


# ----------------------------------------------------------------- pairwise
def test_pairwise_uniform_confident_mask_is_zero():
    lab = torch.full((1, 3, 8, 8), 30.0)
    sim = color_similarity(lab)
    logits = torch.full((1, 1, 8, 8), 10.0)
    box = torch.ones(1, 1, 8, 8)
    loss = pairwise_loss(logits, sim, box, tau=0.3)
    assert loss.item() == pytest.approx(0.0, abs=1e-3)


def test_pairwise_checkerboard_mask_is_large():
    lab = torch.full((1, 3, 8, 8), 30.0)
    sim = color_similarity(lab)
    ys, xs = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    # 2x2 blocks: neighbours at distance 2 (dilation 2) flip along the axes
    pattern = ((ys // 2 + xs // 2) % 2).float()
    logits = torch.where(pattern > 0, 10.0, -10.0).view(1, 1, 8, 8)
    loss = pairwise_loss(logits, sim, torch.ones(1, 1, 8, 8), tau=0.3)
    assert loss.item() > 5.0


def _row_case(logits_row, sim_value=1.0):
    """A 1 x 5 image: only the horizontal +-2 neighbours (indices 3, 4) exist."""
    logits = torch.tensor(logits_row, dtype=torch.float32).view(1, 1, 1, 5)
    sim = color_similarity(torch.zeros(1, 3, 1, 5)) * sim_value
    return logits, sim


def test_pairwise_ignores_low_similarity_edges():
    logits, sim = _row_case([0.3, -1.2, 2.0, 0.7, -0.4])
    box = torch.ones(1, 1, 1, 5)
    # edges touching pixel 4: centre 2 -> +2 (index 4), centre 4 -> -2 (index 3)
    sim[0, 4, 0, 2] = 0.1
    sim[0, 3, 0, 4] = 0.29
    base = pairwise_loss(logits, sim, box, tau=0.3)
    changed = logits.clone()
    changed[0, 0, 0, 4] = 7.0
    assert pairwise_loss(changed, sim, box, tau=0.3).item() == pytest.approx(base.item(), abs=1e-6)
    # sanity: with those edges above tau, the change matters
    sim_hi = sim.clone()
    sim_hi[0, 4, 0, 2] = 0.9
    assert pairwise_loss(changed, sim_hi, box, tau=0.3).item() != pytest.approx(
        pairwise_loss(logits, sim_hi, box, tau=0.3).item(), abs=1e-3
    )


def test_pairwise_ignores_centres_outside_box():
    logits, sim = _row_case([0.3, -1.2, 2.0, 0.7, -0.4])
    box = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0]).view(1, 1, 1, 5)
    base = pairwise_loss(logits, sim, box, tau=0.3).item()
    # pixel 4 only takes part in edges centred at 2 and 4 (both outside the box)
    changed = logits.clone()
    changed[0, 0, 0, 4] = -9.0
    assert pairwise_loss(changed, sim, box, tau=0.3).item() == pytest.approx(base, abs=1e-6)
    # similarity values at centres outside the box (still >= tau) do not matter
    sim2 = sim.clone()
    sim2[0, :, 0, 2] *= 0.5
    sim2[0, :, 0, 4] *= 0.4
    assert pairwise_loss(logits, sim2, box, tau=0.3).item() == pytest.approx(base, abs=1e-6)


def test_pairwise_normaliser_is_edge_count():
    vals = [0.3, -1.2, 2.0, 0.7, -0.4]
    logits, sim = _row_case(vals)
    box = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0]).view(1, 1, 1, 5)
    p = torch.sigmoid(torch.tensor(vals, dtype=torch.float64))

    def nll(i, j):
        return -torch.log(p[i] * p[j] + (1 - p[i]) * (1 - p[j])).item()

    # centres in the box: 0, 1, 3; edges (i -> i +- 2) inside the image:
    # 0->2, 1->3, 3->1 (3->5 is outside) -> 3 edges
    expected = (nll(0, 2) + nll(1, 3) + nll(3, 1)) / 3.0
    loss = pairwise_loss(logits, sim, box, tau=0.3)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_pairwise_no_selected_edges_is_zero():
    logits, sim = _row_case([0.3, -1.2, 2.0, 0.7, -0.4], sim_value=0.1)
    loss = pairwise_loss(logits, sim, torch.ones(1, 1, 1, 5), tau=0.3)
    assert loss.item() == 0.0


def test_pairwise_empty_has_grad():
    logits = torch.zeros(0, 1, 4, 4, requires_grad=True)
    loss = pairwise_loss(logits, torch.zeros(0, 8, 4, 4), torch.zeros(0, 1, 4, 4), tau=0.3)
    assert loss.dim() == 0 and loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None


def test_losses_stable_with_extreme_logits():
    g = torch.Generator().manual_seed(0)
    sign = torch.randint(0, 2, (3, 1, 8, 8), generator=g).float() * 2 - 1
    logits = (sign * 1e4).requires_grad_(True)
    box = torch.zeros(3, 1, 8, 8)
    box[:, :, 2:6, 2:7] = 1
    sim = color_similarity(torch.rand(3, 3, 8, 8, generator=g) * 5)
    loss = projection_loss(logits, box).mean() + pairwise_loss(logits, sim, box, tau=0.3)
    assert torch.isfinite(loss)
    assert loss.item() > 1.0  # disagreeing +-1e4 neighbours give large finite terms
    loss.backward()
    assert torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------- targets
def test_boxes_to_bitmasks_hand_case():
    boxes = torch.tensor([[2.0, 2.0, 9.0, 5.0]])
    out = boxes_to_bitmasks(boxes, 16, 16, stride=4)
    expected = torch.zeros(1, 1, 4, 4)
    # full-res ones on rows 2..5, cols 2..9; sampled rows/cols 2, 6, 10, 14
    expected[0, 0, 0, 0:2] = 1
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)


def test_boxes_to_bitmasks_truncates_and_matches_loop():
    g = torch.Generator().manual_seed(1)
    xy0 = torch.rand(6, 2, generator=g) * 20
    xy1 = xy0 + torch.rand(6, 2, generator=g) * 20
    boxes = torch.cat([xy0, xy1], dim=1)
    boxes[0] = torch.tensor([2.7, 1.9, 9.99, 6.2])
    out = boxes_to_bitmasks(boxes, 32, 24, stride=4)
    assert out.shape == (6, 1, 8, 6)
    for n, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        full = torch.zeros(32, 24)
        full[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1] = 1
        assert torch.equal(out[n, 0], full[2::4, 2::4])


def test_downsample_masks():
    m = torch.zeros(2, 16, 12, dtype=torch.uint8)
    m[0, 2, 6] = 1
    m[1, 5:11, :] = 1
    out = downsample_masks(m, stride=4)
    assert out.shape == (2, 1, 4, 3) and out.dtype == torch.float32
    assert torch.equal(out[:, 0], m[:, 2::4, 2::4].float())
    assert out[0, 0, 0, 1] == 1 and out[0].sum() == 1
    assert torch.equal(downsample_masks(m.bool()), out)


def test_valid_pixel_mask():
    sizes = torch.tensor([[20, 12], [16, 16]])
    out = valid_pixel_mask(sizes, [30, 30], 24, 16, bottom_pixels_removed=10)
    assert out.shape == (2, 24, 16) and out.dtype == torch.bool
    # image 0: round(10 * 20 / 30) = round(6.67) = 7 rows removed -> rows 0..12
    exp0 = torch.zeros(24, 16, dtype=torch.bool)
    exp0[:13, :12] = True
    # image 1: round(10 * 16 / 30) = round(5.33) = 5 rows removed -> rows 0..10
    exp1 = torch.zeros(24, 16, dtype=torch.bool)
    exp1[:11, :16] = True
    assert torch.equal(out[0], exp0)
    assert torch.equal(out[1], exp1)


def test_valid_pixel_mask_no_removal():
    out = valid_pixel_mask(torch.tensor([[8, 4]]), torch.tensor([8]), 8, 8, bottom_pixels_removed=0)
    assert out[0, :, :4].all() and not out[0, :, 4:].any()


def test_image_color_similarity_padding_and_pooling():
    images = torch.full((1, 16, 16, 3), 90, dtype=torch.uint8)
    valid = torch.zeros(1, 16, 16, dtype=torch.bool)
    valid[0, :8, :12] = True
    sim = image_color_similarity(images, valid, stride=4)
    assert sim.shape == (1, 8, 4, 4)
    # valid cells at stride 4 (sampled at 2, 6, 10, 14): rows 0-1, cols 0-2
    v = torch.zeros(4, 4)
    v[:2, :3] = 1
    expected = _in_image(4, 4, valid=v)
    assert torch.allclose(sim[0], expected, atol=1e-6)
    # e.g. cell (0,0) -> (0,2) is an edge between valid cells, (0,0) -> (2,0) is not
    assert sim[0, 4, 0, 0] == pytest.approx(1.0) and sim[0, 6, 0, 0] == 0


def test_image_color_similarity_matches_manual_pipeline():
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (2, 16, 24, 3), generator=g, dtype=torch.uint8)
    valid = torch.ones(2, 16, 24, dtype=torch.bool)
    valid[1, 12:] = False
    pooled = F.avg_pool2d(images.permute(0, 3, 1, 2).float(), 4, 4)
    expected = color_similarity(rgb_to_lab(pooled), valid[:, None, 2::4, 2::4])
    assert torch.allclose(image_color_similarity(images, valid), expected)


# ----------------------------------------------------------------- warm-up
def test_pairwise_warmup_factor():
    assert pairwise_warmup_factor(0, 10000) == 0.0
    assert pairwise_warmup_factor(2500, 10000) == pytest.approx(0.25)
    assert pairwise_warmup_factor(10000, 10000) == 1.0
    assert pairwise_warmup_factor(50000, 10000) == 1.0
    assert pairwise_warmup_factor(5, 0) == 1.0
