"""The `nano` preset (issue 29): it builds, its FLOPs at 384x512 stay under YOLO11n-seg's by the
counter of `boxinst info`, it trains with a recipe of its own, and its exported ONNX graph gives
ONNX Runtime the PyTorch module's detections on one image (the parity tolerances of tests/parity.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from boxinst_serve.config import YOLO11N_SEG_GFLOPS_384X512, nano, preset
from boxinst_serve.model import build_model


def test_nano_is_a_preset_and_builds_with_its_heads_shapes():
    cfg = preset("nano", num_classes=5)
    assert cfg.name == "nano"
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randint(0, 256, (1, 96, 128, 3), dtype=torch.uint8))
    for level, stride in enumerate(cfg.strides):
        assert out.cls_logits[level].shape == (1, 5, -(-96 // stride), -(-128 // stride))
        assert out.controller[level].shape[1] == cfg.num_controller_params
    assert out.mask_feats.shape == (1, cfg.mask_branch_out_channels, 12, 16)


def test_nano_flops_at_384x512_stay_under_yolo11n_seg():
    from boxinst_serve.apps.bench.run import model_info

    info = model_info("nano", (384, 512))
    assert info["gflops"] <= YOLO11N_SEG_GFLOPS_384X512, info
    assert model_info("lite", (384, 512))["gflops"] > 3 * info["gflops"]  # what nano is for


@pytest.mark.parametrize("changes", [{"backbone": "shufflenet_v2_x1_0"}, {"backbone": "mobilenet_v3_large"},
                                     {"backbone": "regnet_x_400mf"}, {"backbone": "resnet", "backbone_width": 0.375}])
def test_each_backbone_gives_fpn_levels_at_the_config_strides(changes):
    from boxinst_serve.model.backbone import BackboneFPN

    cfg = nano().replace(backbone_depth=18, **changes)
    with torch.no_grad():
        levels = BackboneFPN(cfg).eval()(torch.zeros(1, 3, 128, 256))
    assert [tuple(p.shape) for p in levels] == [(1, 32, -(-128 // s), -(-256 // s)) for s in cfg.strides]


def test_a_mobile_backbone_refuses_frozen_batchnorm_with_what_to_set():
    with pytest.raises(ValueError, match="backbone_norm 'bn' and freeze_at 0"):
        build_model(nano().replace(backbone_norm="frozen_bn", freeze_at=2))


def test_nano_has_cpu_and_cuda_recipes_like_lite():
    from training.config import RECIPES, TrainConfig

    assert ("nano", "cpu") in RECIPES and ("nano", "cuda") in RECIPES
    cfg = nano()
    train = TrainConfig.for_model("nano", cfg.min_size_test, cfg.max_size_test, "cpu", 1200)
    lite_train = TrainConfig.for_model("lite", cfg.min_size_test, cfg.max_size_test, "cpu", 1200)
    assert (train.batch_size, train.min_sizes, train.max_size) == (lite_train.batch_size, lite_train.min_sizes,
                                                                   lite_train.max_size)


def _spread_weights(model: torch.nn.Module) -> None:
    """Random weights near 0 give every location the same score (ties any two engines may break
    apart): He-initialised convolutions, spread class and centerness logits, boxes of a few strides."""
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        head = model.head
        for conv in (head.cls_logits, head.centerness):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
        head.cls_logits.bias.fill_(-2.0)
        head.bbox_pred.bias.fill_(1.0)  # exp(1): boxes of about 3 strides per side


def test_nano_exports_and_onnxruntime_agrees_with_pytorch(tiny_shapes, tmp_path):
    pytest.importorskip("onnxruntime")
    from boxinst_serve.checkpoint import save_atomic
    from boxinst_serve.engines import load_engine
    from boxinst_serve.postprocess import instances_for
    from boxinst_serve.preprocess import prepare_for, read_image
    from export.onnx import export_onnx
    from tests.parity import BOX_TOL_PX, MIN_MASK_IOU, NOISE, SCORE_TOL, Detections, compare

    cfg = nano(num_classes=7).replace(min_size_test=128, max_size_test=160, max_detections=20)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    _spread_weights(model)
    save_atomic({"model": model.state_dict(), "model_config": cfg.to_dict()}, tmp_path / "nano.pt")
    image = read_image(sorted(Path(tiny_shapes["images"]).glob("*.png"))[0])
    batch, metas = prepare_for(cfg, [image])
    runs = {}
    for name, path in (("pytorch", tmp_path / "nano.pt"), ("onnx", export_onnx(tmp_path / "nano.pt", tmp_path))):
        inst = instances_for(cfg, load_engine(path)(batch), 0, metas[0])
        runs[name] = Detections(inst.boxes, inst.scores, inst.classes, inst.masks)
    assert len(runs["pytorch"].scores) > 0
    report = compare(runs["pytorch"], runs["onnx"], box_tol=BOX_TOL_PX, score_tol=SCORE_TOL,
                     min_mask_iou=MIN_MASK_IOU, score_floor=cfg.score_thresh ** 0.5, cap=cfg.max_detections,
                     noise=NOISE, ties=True)
    print(f"nano pytorch vs onnx: {report.describe()}")
    assert report.ok, report.failures
    assert report.nonempty_masks > 0
