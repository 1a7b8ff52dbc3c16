"""Importing AdelaiDet's BoxInst/CondInst checkpoints (the paper's model zoo).

The synthetic tests build state dicts in AdelaiDet's exact layout (checked against the key list
in ../shared/ where it exists). The parity tests compare the imported oracle checkpoint with what
AdelaiDet itself computed for it (../shared/oracle/adelaidet_r50/README.md), through PyTorch and
through ONNX Runtime on the exported graph; they skip, saying why, where ../shared/ is absent
(a user's clone)."""
from __future__ import annotations

import datetime
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from boxinst_serve.checkpoint import load_checkpoint
from training.adelaidet import (COCO_CLASS_NAMES, CheckpointImportError, import_adelaidet, import_config,
                                target_key)
from tests.parity import ORACLE, ORACLE_IMAGES as IMAGES, SHARED, check_against_oracle
NORM = ("weight", "bias", "running_mean", "running_var")


def adelaidet_keys(depth: int = 50, sem: bool = False, boxinst: bool = True) -> list[str]:
    """The state-dict keys of an AdelaiDet CondInst/BoxInst ResNet-FPN model (ADELAIDET.md §2)."""
    keys = ["backbone.bottom_up.stem.conv1.weight"] + [f"backbone.bottom_up.stem.conv1.norm.{n}" for n in NORM]
    for stage, count in zip(range(2, 6), (3, 4, 6 if depth == 50 else 23, 3)):
        for b in range(count):
            for conv in ("conv1", "conv2", "conv3") + (("shortcut",) if b == 0 else ()):
                keys.append(f"backbone.bottom_up.res{stage}.{b}.{conv}.weight")
                keys += [f"backbone.bottom_up.res{stage}.{b}.{conv}.norm.{n}" for n in NORM]
    for level in (3, 4, 5):
        keys += [f"backbone.fpn_{kind}{level}.{leaf}" for kind in ("lateral", "output") for leaf in ("weight", "bias")]
    keys += [f"backbone.top_block.{p}.{leaf}" for p in ("p6", "p7") for leaf in ("weight", "bias")]
    head = "proposal_generator.fcos_head"
    for tower in ("cls", "bbox"):
        for j in range(4):
            keys += [f"{head}.{tower}_tower.{3 * j + part}.{leaf}" for part in (0, 1) for leaf in ("weight", "bias")]
    keys += [f"{head}.{out}.{leaf}" for out in ("cls_logits", "bbox_pred", "ctrness") for leaf in ("weight", "bias")]
    keys += [f"{head}.scales.{i}.scale" for i in range(5)] + ["controller.weight", "controller.bias"]
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    for i in range(3):
        keys += [f"mask_branch.refine.{i}.0.weight"] + [f"mask_branch.refine.{i}.1.{n}" for n in bn]
    for i in range(4):
        keys += [f"mask_branch.tower.{i}.0.weight"] + [f"mask_branch.tower.{i}.1.{n}" for n in bn]
    keys += ["mask_branch.tower.4.weight", "mask_branch.tower.4.bias", "mask_head.sizes_of_interest"]
    if boxinst:
        keys.append("mask_head._iter")
    if sem:
        for i in range(2):
            keys += [f"mask_branch.seg_head.{i}.0.weight"] + [f"mask_branch.seg_head.{i}.1.{n}" for n in bn]
        keys += ["mask_branch.logits.weight", "mask_branch.logits.bias"]
    return keys


def synthetic_state(depth: int = 50, boxinst: bool = True, sem: bool = False, seed: int = 0) -> dict:
    """Random weights in AdelaiDet's layout, shaped through the key map onto a model of the
    matching config (the map's shapes are what the test of the key list checks)."""
    from boxinst_serve.config import r50_fpn, r101_fpn
    from boxinst_serve.model import build_model

    mask_channels = 16 if boxinst else 8
    cfg = (r50_fpn if depth == 50 else r101_fpn)().replace(stride_in_1x1=True, head_conv_bias=True,
                                                           mask_branch_out_channels=mask_channels)
    shapes = {k: v.shape for k, v in build_model(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key in adelaidet_keys(depth, sem=sem, boxinst=boxinst):
        if key.endswith("sizes_of_interest"):
            state[key] = torch.tensor([64, 128, 256, 512, 1024])
        elif key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("_iter") or key.endswith(".scale"):
            state[key] = torch.ones(1)
        elif ".seg_head." in key or ".logits." in key:
            state[key] = torch.zeros(80 if key.endswith("logits.bias") else 1)
        else:
            shape = shapes[target_key(key)]
            state[key] = (torch.rand(shape, generator=g) + 0.5 if key.endswith("running_var")
                          else torch.randn(shape, generator=g) * 0.01).half()
    return state


@pytest.fixture(scope="module")
def r50_state() -> dict:
    return synthetic_state(50)


def test_the_key_layout_is_adelaidets_own():
    listing = SHARED / "adelaidet_boxinst_r50_keys.txt"
    if not listing.exists():
        pytest.skip(f"{listing} is not here (it ships with the project's CI, not with a clone)")
    listed = {}
    for line in listing.read_text().splitlines():
        if m := re.match(r"^([a-z_][\w.]*) \[([\d, ]*)\]", line):
            listed[m.group(1)] = tuple(int(d) for d in m.group(2).split(",") if d.strip())
    assert sorted(listed) == sorted(adelaidet_keys(50))
    shapes = {k: tuple(v.shape) for k, v in synthetic_state(50).items()}  # what the key map gives them
    assert {k: shape for k, shape in listed.items() if shape} == {k: shapes[k] for k in listed if listed[k]}


def test_a_boxinst_r50_checkpoint_imports_strictly(r50_state, tmp_path):
    torch.save({"model": r50_state, "iteration": 90000}, tmp_path / "boxinst.pth")
    report = import_adelaidet(tmp_path / "boxinst.pth", tmp_path / "out.pt")
    assert (report.kind, report.depth, report.num_classes) == ("BoxInst", 50, 80)
    assert sorted(report.dropped) == ["mask_head._iter", "mask_head.sizes_of_interest"]
    ckpt = load_checkpoint(tmp_path / "out.pt")
    cfg = ckpt["model_config"]
    assert cfg.class_names == COCO_CLASS_NAMES and len(set(cfg.class_names)) == 80
    assert cfg.num_controller_params == 233 and cfg.stride_in_1x1 and cfg.head_conv_bias and cfg.pad_with_mean
    assert (cfg.pixel_std, cfg.resize, cfg.clip_boxes_before_nms, cfg.remove_empty_boxes) == \
           ((1.0, 1.0, 1.0), "detectron2", False, True)
    model = ckpt["model"]
    # BGR -> RGB on the first conv's input channels; every other tensor copied (as float32)
    stem = r50_state["backbone.bottom_up.stem.conv1.weight"].float()
    assert torch.equal(model["backbone.body.conv1.weight"], stem.flip(1))
    assert torch.equal(model["head.cls_tower.1.0.bias"],
                       r50_state["proposal_generator.fcos_head.cls_tower.3.bias"].float())
    assert model["head.scales"].shape == (5,)
    from boxinst_serve.checkpoint import load_model

    net = load_model(tmp_path / "out.pt")
    assert net.backbone.body.layer2[0].conv1.stride == (2, 2) and net.backbone.body.layer2[0].conv2.stride == (1, 1)


def test_a_bare_state_dict_with_module_prefixes_imports(r50_state, tmp_path):
    torch.save({"module." + k: v for k, v in r50_state.items()}, tmp_path / "bare.pth")
    assert import_adelaidet(tmp_path / "bare.pth", tmp_path / "out.pt").kind == "BoxInst"


def test_condinst_and_r101_are_recognised():
    condinst = synthetic_state(50, boxinst=False, sem=True)
    cfg, kind = import_config(condinst)
    assert (kind, cfg.mask_branch_out_channels, cfg.num_controller_params) == ("CondInst", 8, 169)
    cfg, kind = import_config(synthetic_state(101))
    assert (kind, cfg.backbone_depth) == ("BoxInst", 101)


def _refusal(state: dict, tmp_path: Path) -> str:
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointImportError) as e:
        import_adelaidet(tmp_path / "bad.pth", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
    return str(e.value)


def test_a_missing_key_is_refused_by_name(r50_state, tmp_path):
    state = dict(r50_state)
    del state["backbone.bottom_up.res3.2.conv2.norm.running_var"]
    assert "backbone.body.layer2.2.bn2.running_var" in _refusal(state, tmp_path)


def test_an_extra_key_is_refused_by_name(r50_state, tmp_path):
    state = dict(r50_state, **{"proposal_generator.fcos_head.share_tower.0.weight": torch.zeros(1)})
    assert "proposal_generator.fcos_head.share_tower.0.weight" in _refusal(state, tmp_path)


def test_a_wrong_shape_is_refused_by_name(r50_state, tmp_path):
    state = dict(r50_state)
    state["backbone.fpn_output4.weight"] = torch.zeros(256, 256, 1, 1)
    message = _refusal(state, tmp_path)
    assert "backbone.fpn_output4.weight" in message and "(256, 256, 1, 1)" in message


def test_bifpn_and_dcn_checkpoints_are_refused_naming_what_is_unsupported(r50_state, tmp_path):
    bifpn = {k.replace("backbone.bottom_up.", "backbone.bottom_up.backbone."): v for k, v in r50_state.items()
             if not k.startswith("backbone.fpn_") and not k.startswith("backbone.top_block")}
    bifpn["backbone.repeated_bifpn.0.outputs_f3_3_4.weight"] = torch.zeros(160, 160, 3, 3)
    assert "BiFPN backbones are not supported" in _refusal(bifpn, tmp_path)
    dcn = dict(r50_state, **{"backbone.bottom_up.res3.0.conv2_offset.weight": torch.zeros(27, 128, 3, 3)})
    assert "deformable convolutions (DCN" in _refusal(dcn, tmp_path)


def test_a_file_needing_more_than_weights_is_refused_with_what_to_do(r50_state, tmp_path):
    torch.save({"model": {"controller.weight": torch.zeros(1)}, "saved_at": datetime.datetime(2021, 3, 5)},
               tmp_path / "pickled.pth")
    with pytest.raises(CheckpointImportError, match="weights_only=True.*Keep only its weights"):
        import_adelaidet(tmp_path / "pickled.pth", tmp_path / "out.pt")


def test_fine_tuning_reinitialises_only_the_classification_layer(r50_state, tiny_shapes, tmp_path):
    torch.save({"model": r50_state}, tmp_path / "boxinst.pth")
    import_adelaidet(tmp_path / "boxinst.pth", tmp_path / "imported.pt")
    imported = load_checkpoint(tmp_path / "imported.pt")
    from boxinst_serve.model import build_model
    from training.trainer import _init_from

    cfg = imported["model_config"].replace(num_classes=7, class_names=[str(i) for i in range(7)])
    model = build_model(cfg)
    reset = _init_from(model, cfg, str(tmp_path / "imported.pt"))
    assert reset == ["head.cls_logits.weight", "head.cls_logits.bias"]
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in imported["model"].items() if k not in reset)
    assert state["head.cls_logits.weight"].shape[0] == 7

    # and through the command: it trains, says what it reset, and keeps the imported architecture
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "boxinst_serve.cli", "train", "--init", str(tmp_path / "imported.pt"),
                           "--data", tiny_shapes["train"], "--iters", "2", "--batch-size", "1", "--min-sizes", "128",
                           "--max-size", "160", "--workers", "0", "--out", str(run), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "re-initialised the classification layer (head.cls_logits.weight, head.cls_logits.bias)" in done.stderr
    final = load_checkpoint(run / "final.pt")["model_config"]
    assert final.num_classes == 7 and final.stride_in_1x1 and final.pad_with_mean
    assert (final.min_size_test, final.max_size_test) == (128, 160)


# ---- parity with AdelaiDet's own outputs ---------------------------------------------------------
# (oracle_checkpoint and oracle_onnx, the imported checkpoint and its export, are conftest.py's: made once
# per session for these tests and tests/test_openvino.py's)
def _check_parity(engine, name: str) -> None:
    from boxinst_serve.postprocess import instances_for
    from boxinst_serve.preprocess import prepare_for, read_image

    expected = np.load(ORACLE / f"expected_{name}.npz")
    inter = np.load(ORACLE / f"intermediates_{name}.npz")
    cfg = engine.config
    batch, metas = prepare_for(cfg, [read_image(ORACLE / "images" / f"{name}.png")])
    rh, rw = metas[0].resized_hw
    assert (rh, rw) == tuple(expected["resized_hw"]) and batch.shape[1:3] == tuple(expected["padded_hw"])
    # the same input pixels as AdelaiDet's (PIL resize), in RGB order
    assert np.array_equal(batch[0, :rh, :rw, ::-1], inter["input_bgr_resized"])
    inst = instances_for(cfg, engine(batch), 0, metas[0])
    check_against_oracle(name, inst.boxes, inst.scores, inst.classes, inst.masks, cfg.score_thresh,
                         cfg.max_detections, type(engine).__name__)


@pytest.mark.parametrize("name", IMAGES)
def test_imported_weights_give_adelaidets_outputs_in_pytorch(oracle_checkpoint, name):
    from boxinst_serve.engines import load_engine

    _check_parity(load_engine(oracle_checkpoint), name)


@pytest.mark.parametrize("name", IMAGES)
def test_imported_weights_give_adelaidets_outputs_in_onnxruntime(oracle_onnx, name):
    from boxinst_serve.engines import load_engine

    _check_parity(load_engine(oracle_onnx), name)


@pytest.mark.parametrize("kind,depth", [("CondInst", 50), ("BoxInst", 101)])
def test_condinst_and_r101_run_end_to_end(kind, depth, tiny_shapes, tmp_path):
    """A CondInst checkpoint and an R-101 state dict in AdelaiDet's layout: imported, then PyTorch
    against the exported ONNX graph on one photo (the oracle's astronaut where ../shared is here,
    else a shapes image), with the parity tolerances (tests/parity.py). Tested at a 320 px short
    side to keep the R-101 export short; the weights and graph are the same at any size."""
    from boxinst_serve.checkpoint import save_atomic
    from boxinst_serve.engines import load_engine
    from boxinst_serve.postprocess import instances_for
    from boxinst_serve.preprocess import prepare_for, read_image
    from export.onnx import export_onnx
    from tests.parity import BOX_TOL_PX, MIN_MASK_IOU, NOISE, SCORE_TOL, Detections, compare

    state = synthetic_state(depth, boxinst=kind == "BoxInst", sem=kind == "CondInst", seed=3)
    # Weights near 0 give every location the same score (ties that any two engines may break apart)
    # and empty boxes (which the import's config drops): He-initialised convolutions, spread scores,
    # boxes of a few strides.
    g = torch.Generator().manual_seed(4)
    for key, value in state.items():
        if value.ndim == 4:
            fan_in = value[0].numel()
            state[key] = (torch.randn(value.shape, generator=g) * (2.0 / fan_in) ** 0.5).half()
    head = "proposal_generator.fcos_head"
    for name in ("cls_logits", "ctrness"):
        state[f"{head}.{name}.weight"] = (torch.randn(state[f"{head}.{name}.weight"].shape, generator=g) * 0.3).half()
    state[f"{head}.cls_logits.bias"] = torch.full((80,), -2.0).half()
    state[f"{head}.bbox_pred.bias"] = torch.full((4,), 3.0).half()
    torch.save({"model": state}, tmp_path / "adelaidet.pth")
    report = import_adelaidet(tmp_path / "adelaidet.pth", tmp_path / "imported.pt")
    assert (report.kind, report.depth) == (kind, depth)
    ckpt = load_checkpoint(tmp_path / "imported.pt")
    cfg = ckpt["model_config"].replace(min_size_test=320, max_size_test=512)
    save_atomic({"model": ckpt["model"], "model_config": cfg.to_dict()}, tmp_path / "small.pt")
    photo = ORACLE / "images" / "astronaut.png"
    image = read_image(photo if photo.exists() else sorted(Path(tiny_shapes["images"]).glob("*.png"))[0])
    batch, metas = prepare_for(cfg, [image])
    runs = {}
    for name, path in (("pytorch", tmp_path / "small.pt"), ("onnx", export_onnx(tmp_path / "small.pt", tmp_path))):
        inst = instances_for(cfg, load_engine(path)(batch), 0, metas[0])
        runs[name] = Detections(inst.boxes, inst.scores, inst.classes, inst.masks)
    assert len(runs["pytorch"].scores) > 0
    result = compare(runs["pytorch"], runs["onnx"], box_tol=BOX_TOL_PX, score_tol=SCORE_TOL, min_mask_iou=MIN_MASK_IOU,
                     score_floor=cfg.score_thresh ** 0.5, cap=cfg.max_detections, noise=NOISE, ties=True)
    print(f"{kind} R-{depth}, PyTorch vs ONNX: {result.describe()}")
    assert result.ok, result.failures
    # Random weights tie many scores (measured: 92 of 100 matched for CondInst R-50, 85 for BoxInst
    # R-101; every unmatched one a tie, named): most must match, and every match agrees.
    assert result.nonempty_masks > 0 and len(result.matched) >= 0.75 * len(runs["pytorch"].scores)
