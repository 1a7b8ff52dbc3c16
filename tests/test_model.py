"""The CondInst network: shapes of every output, the dynamic head against a grouped-convolution
reference, aligned bilinear upsampling and relative coordinates by hand."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from boxinst_serve.config import OUTPUT_NAMES, ModelConfig, lite, preset, r50_fpn
from boxinst_serve.model import build_model
from boxinst_serve.model.dynamic_head import dynamic_mask_logits, relative_coords, split_dynamic_params
from boxinst_serve.model.layers import aligned_bilinear, compute_locations
from boxinst_serve.model.detect import InferenceModel


def test_controller_parameter_count_matches_spec():
    assert r50_fpn().num_controller_params == 233  # 18*8 + 8*8 + 8*1 + 8 + 8 + 1
    assert r50_fpn().replace(mask_head_channels=16).num_controller_params == 18 * 16 + 16 * 16 + 16 + 16 + 16 + 1


def test_config_round_trips_through_json():
    cfg = lite(num_classes=3).replace(class_names=["a", "b", "c"])
    assert ModelConfig.from_json(cfg.to_json()) == cfg


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match="lite"):
        preset("r18")


@pytest.mark.parametrize("hw", [(128, 160), (96, 64)])
def test_head_outputs_have_documented_shapes(hw):
    cfg = lite(num_classes=5)
    model = build_model(cfg).eval()
    h, w = hw
    with torch.no_grad():
        out = model(torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8))
    for level, stride in enumerate(cfg.strides):
        hl, wl = -(-h // stride), -(-w // stride)
        assert out.cls_logits[level].shape == (2, 5, hl, wl)
        assert out.bbox_reg[level].shape == (2, 4, hl, wl)
        assert out.centerness[level].shape == (2, 1, hl, wl)
        assert out.controller[level].shape == (2, 233, hl, wl)
        assert (out.bbox_reg[level] >= 0).all()
    assert out.mask_feats.shape == (2, 16, h // 8, w // 8)


def test_inference_model_follows_the_network_contract():
    cfg = lite(num_classes=4).replace(score_thresh=0.0)  # keep detections from a random network
    net = InferenceModel(build_model(cfg).eval())
    with torch.no_grad():
        outs = dict(zip(OUTPUT_NAMES, net(torch.randint(0, 256, (2, 96, 128, 3), dtype=torch.uint8))))
    k = cfg.max_detections
    assert outs["num_detections"].dtype == torch.int32 and outs["num_detections"].shape == (2,)
    assert outs["boxes"].shape == (2, k, 4) and outs["boxes"].dtype == torch.float32
    assert outs["scores"].shape == (2, k)
    assert outs["classes"].shape == (2, k) and outs["classes"].dtype == torch.int32
    assert outs["masks"].shape == (2, k, 24, 32) and outs["masks"].dtype == torch.uint8
    for b in range(2):
        n = int(outs["num_detections"][b])
        assert 0 < n <= k
        assert (outs["scores"][b, n:] == 0).all() and (outs["masks"][b, n:] == 0).all()
        assert (outs["scores"][b, :n - 1] >= outs["scores"][b, 1:n]).all()  # sorted by score
        boxes = outs["boxes"][b, :n]
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 128).all()


def test_aligned_bilinear_matches_spec_by_hand():
    x = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]]]])
    y = aligned_bilinear(x, 2)
    assert y.shape == (1, 1, 4, 4)
    # pad right/bottom (replicate) -> 3x3, align_corners to 5x5 (step 0.5), pad left/top by 1, crop 4x4
    row0 = torch.tensor([0.0, 0.0, 1.0, 2.0])
    assert torch.allclose(y[0, 0, 0], row0)
    assert torch.allclose(y[0, 0, 1], row0)
    assert torch.allclose(y[0, 0, 2], torch.tensor([2.0, 2.0, 3.0, 4.0]))
    assert torch.allclose(y[0, 0, 3], torch.tensor([4.0, 4.0, 5.0, 6.0]))


def test_locations_are_pixel_centres():
    loc = compute_locations(2, 3, 8)
    assert loc.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_relative_coords_by_hand():
    cfg = lite()
    rel = relative_coords(torch.tensor([[20.0, 12.0]]), torch.tensor([1]), 2, 3, cfg)
    # mask locations at stride 8: x in (4, 12, 20), y in (4, 12); level 1 -> size of interest 128
    assert torch.allclose(rel[0, 0], torch.tensor([16.0, 8.0, 0.0, 16.0, 8.0, 0.0]) / 128)
    assert torch.allclose(rel[0, 1], torch.tensor([8.0, 8.0, 8.0, 0.0, 0.0, 0.0]) / 128)


def test_dynamic_head_equals_grouped_convolution_reference():
    """The bmm formulation must equal CondInst's grouped 1x1 convolutions."""
    torch.manual_seed(0)
    cfg = lite()
    n, h, w = 3, 4, 5
    feats = torch.randn(2, cfg.mask_branch_out_channels, h, w)
    params = torch.randn(n, cfg.num_controller_params)
    locs = torch.tensor([[10.0, 6.0], [30.0, 20.0], [4.0, 4.0]])
    levels = torch.tensor([0, 2, 4])
    image_index = torch.tensor([0, 1, 1])
    got = dynamic_mask_logits(feats, params, locs, levels, image_index, cfg)

    rel = relative_coords(locs, levels, h, w, cfg).reshape(n, 2, h, w)
    x = torch.cat([rel, feats[image_index]], dim=1).reshape(1, -1, h, w)
    weights, biases = split_dynamic_params(params, cfg)
    for i, (wt, b) in enumerate(zip(weights, biases)):
        x = F.conv2d(x, wt.reshape(-1, wt.shape[2], 1, 1), b.reshape(-1), groups=n)
        if i < len(weights) - 1:
            x = F.relu(x)
    expected = aligned_bilinear(x.reshape(n, 1, h, w), 2)
    assert got.shape == (n, 1, 2 * h, 2 * w)
    assert torch.allclose(got, expected, atol=1e-5)


def test_frozen_stages_have_no_gradients():
    model = build_model(r50_fpn(num_classes=2))
    body = model.backbone.body
    assert not any(p.requires_grad for p in body.conv1.parameters())
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())


def test_adelaidet_switches_move_the_stride_and_add_tower_biases_without_changing_shapes():
    from boxinst_serve.config import r50_fpn

    plain, switched = build_model(r50_fpn(num_classes=3)), build_model(
        r50_fpn(num_classes=3).replace(stride_in_1x1=True, head_conv_bias=True))
    for layer in ("layer2", "layer3", "layer4"):
        block = getattr(switched.backbone.body, layer)[0]
        assert (block.conv1.stride, block.conv2.stride) == ((2, 2), (1, 1))
        assert getattr(plain.backbone.body, layer)[0].conv2.stride == (2, 2)
    extra = set(switched.state_dict()) - set(plain.state_dict())
    assert extra == {f"head.{t}_tower.{i}.0.bias" for t in ("cls", "bbox") for i in range(4)}
    x = torch.zeros(1, 64, 96, 3, dtype=torch.uint8)
    with torch.no_grad():
        assert [f.shape for f in switched.backbone(switched.normalize(x))] == \
               [f.shape for f in plain.backbone(plain.normalize(x))]
    with pytest.raises(ValueError, match="bottleneck"):
        build_model(lite().replace(stride_in_1x1=True))


def test_weight_differences_ignore_classes_and_test_settings():
    from boxinst_serve.config import r50_fpn

    cfg = r50_fpn()
    assert cfg.weight_differences(cfg.replace(num_classes=3, min_size_test=600, score_thresh=0.3)) == []
    assert cfg.weight_differences(cfg.replace(stride_in_1x1=True, pixel_std=(1.0, 1.0, 1.0))) == \
           ["pixel_std", "stride_in_1x1"]
