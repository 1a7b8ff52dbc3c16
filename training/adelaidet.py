"""Import of AdelaiDet's BoxInst and CondInst checkpoints (the paper's model zoo) into this
project's checkpoint format, strictly: every source key is consumed, every target key filled,
every shape equal, or the import fails naming the keys.

What the weights need beyond a key map (../shared/ADELAIDET.md §9) is set in the ModelConfig the
checkpoint carries, so every verb runs them the way AdelaiDet does: the ResNet stride in the
first 1x1 conv, biased FCOS tower convs, detectron2's input convention (BGR, mean
[103.53, 116.28, 123.675], std 1: the first conv's input channels are reversed here so the
network keeps taking RGB), padding with the mean colour, detectron2's resize, NMS on unclipped
boxes and empty boxes dropped.

    boxinst import-weights BoxInst_MS_R_50_1x.pth --out boxinst_r50.pt
"""
from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from boxinst_serve.checkpoint import save_atomic
from boxinst_serve.config import ModelConfig, r50_fpn, r101_fpn

log = logging.getLogger(__name__)

# detectron2's COCO classes in contiguous order (sorted category ids 1..90 with gaps).
COCO_CLASS_NAMES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]

# Keys that exist only for training (or are constants rebuilt from the config) and are dropped.
_DROPPED = (
    re.compile(r"mask_head\._iter$"),  # BoxInst's pairwise warm-up counter
    re.compile(r"mask_head\.sizes_of_interest$"),  # checked against the config, then dropped
    re.compile(r"mask_branch\.(seg_head|logits)\."),  # the _sem models' semantic-segmentation head
    re.compile(r"backbone\.bottom_up\..*\.num_batches_tracked$"),  # FrozenBN's (newer detectron2 only)
)

_BLOCK = re.compile(r"backbone\.bottom_up\.res(\d)\.(\d+)\.(conv[123]|shortcut)(\.norm)?\.(\w+)$")
_TOWER = re.compile(r"proposal_generator\.fcos_head\.(cls|bbox)_tower\.(\d+)\.(weight|bias)$")
_FPN = re.compile(r"backbone\.fpn_(lateral|output)([345])\.(weight|bias)$")
_NORM = {"weight": "weight", "bias": "bias", "running_mean": "running_mean", "running_var": "running_var"}


class CheckpointImportError(ValueError):
    """A checkpoint that cannot be imported; the message says why and what to do."""


@dataclass
class ImportReport:
    """What an import found and did."""

    kind: str  # "BoxInst" or "CondInst"
    depth: int
    num_classes: int
    source_keys: int
    dropped: list[str] = field(default_factory=list)
    config: ModelConfig | None = None

    def describe(self) -> str:
        return (f"{self.kind} R-{self.depth}, {self.num_classes} classes, {self.source_keys} source keys "
                f"({len(self.dropped)} training-only dropped: {', '.join(self.dropped) or 'none'})")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of an AdelaiDet/detectron2 checkpoint: `{"model": state_dict, ...}` or a bare
    state dict, loaded with weights_only=True (nothing unpickled as code), `module.` stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointImportError(
            f"'{path}' holds more than tensors (e.g. pickled optimizer or scheduler objects), so it cannot be read "
            f"safely with torch.load(weights_only=True): {str(e).splitlines()[0]}. Keep only its weights, on a "
            "machine and with a file you trust: python -c \"import torch; c = torch.load('IN.pth', "
            "weights_only=False); torch.save(c.get('model', c), 'OUT.pth')\", then import OUT.pth") from e
    except Exception as e:  # truncated or not a torch file
        raise CheckpointImportError(f"cannot read '{path}' as a torch checkpoint: {e}") from e
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointImportError(f"'{path}' is neither a state dict nor a {{'model': state_dict}} checkpoint")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _refuse_unsupported(state: dict[str, torch.Tensor]) -> None:
    bifpn = [k for k in state if k.startswith("backbone.repeated_bifpn.") or ".bifpn" in k.lower()]
    if bifpn:
        raise CheckpointImportError(f"this is a BiFPN checkpoint (e.g. '{bifpn[0]}'): BiFPN backbones are not supported, only "
                           "the ResNet-FPN models (BoxInst/CondInst MS_R_50/MS_R_101, 1x/3x)")
    dcn = [k for k in state if "conv2_offset" in k]
    if dcn:
        raise CheckpointImportError(f"this checkpoint has deformable convolutions (DCN, e.g. '{dcn[0]}'): DCN backbones are "
                           "not supported, only the ResNet-FPN models (BoxInst/CondInst MS_R_50/MS_R_101, 1x/3x)")
    needed = ("backbone.fpn_lateral3.weight", "controller.weight", "proposal_generator.fcos_head.cls_logits.weight",
              "mask_branch.tower.4.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointImportError(f"not an AdelaiDet CondInst/BoxInst ResNet-FPN checkpoint: missing {missing}")


def import_config(state: dict[str, torch.Tensor], class_names: list[str] | None = None) -> tuple[ModelConfig, str]:
    """The ModelConfig of an AdelaiDet checkpoint's weights and its kind ("BoxInst"/"CondInst")."""
    _refuse_unsupported(state)
    res4 = {int(m.group(2)) for k in state if (m := _BLOCK.match(k)) and m.group(1) == "4"}
    depth = {6: 50, 23: 101}.get(len(res4))
    if depth is None:
        raise CheckpointImportError(f"res4 has {len(res4)} blocks: only ResNet-50 (6) and ResNet-101 (23) are supported")
    num_classes = state["proposal_generator.fcos_head.cls_logits.weight"].shape[0]
    mask_channels = state["mask_branch.tower.4.weight"].shape[0]
    names = list(class_names) if class_names else (COCO_CLASS_NAMES if num_classes == 80 else
                                                   [str(i) for i in range(num_classes)])
    if len(names) != num_classes:
        raise CheckpointImportError(f"{len(names)} class names given for a checkpoint of {num_classes} classes")
    base = (r50_fpn if depth == 50 else r101_fpn)(num_classes=num_classes)
    controller = state["controller.weight"].shape[0]
    kind = {233: "BoxInst", 169: "CondInst"}.get(controller, "CondInst")
    cfg = base.replace(
        name=f"adelaidet_{kind.lower()}_r{depth}_fpn", class_names=names, mask_branch_out_channels=mask_channels,
        stride_in_1x1=True, head_conv_bias=True, pad_with_mean=True, resize="detectron2",
        clip_boxes_before_nms=False, remove_empty_boxes=True,
        pixel_mean=(123.675, 116.28, 103.53), pixel_std=(1.0, 1.0, 1.0))
    if cfg.num_controller_params != controller:
        raise CheckpointImportError(f"the controller has {controller} outputs, but a dynamic head on {mask_channels} mask "
                           f"features needs {cfg.num_controller_params}: an unsupported mask-head layout")
    soi = state.get("mask_head.sizes_of_interest")
    if soi is not None and [float(v) for v in soi.tolist()] != list(cfg.sizes_of_interest):
        raise CheckpointImportError(f"mask_head.sizes_of_interest is {soi.tolist()}, not {list(cfg.sizes_of_interest)}")
    return cfg, kind


def target_key(key: str) -> str | None:
    """This project's key for an AdelaiDet key (None for keys that are dropped); raises on a key
    that is neither mapped nor known to be dropped."""
    if any(p.search(key) for p in _DROPPED):
        return None
    if key.startswith("backbone.bottom_up.stem.conv1."):
        rest = key[len("backbone.bottom_up.stem.conv1."):]
        return "backbone.body.conv1.weight" if rest == "weight" else f"backbone.body.bn1.{_NORM[rest.split('.')[1]]}"
    if m := _BLOCK.match(key):
        stage, block, conv, norm, leaf = m.groups()
        prefix = f"backbone.body.layer{int(stage) - 1}.{block}."
        if conv == "shortcut":
            return prefix + ("downsample.1." + _NORM[leaf] if norm else "downsample.0.weight")
        return prefix + (f"bn{conv[-1]}.{_NORM[leaf]}" if norm else f"{conv}.weight")
    if m := _FPN.match(key):
        kind, level, leaf = m.groups()
        blocks = "inner_blocks" if kind == "lateral" else "layer_blocks"
        return f"backbone.fpn.{blocks}.{int(level) - 3}.0.{leaf}"
    if m := re.match(r"backbone\.top_block\.(p6|p7)\.(weight|bias)$", key):
        return f"backbone.fpn.extra_blocks.{m.group(1)}.{m.group(2)}"
    if m := _TOWER.match(key):
        tower, index, leaf = m.groups()
        layer, part = divmod(int(index), 3)
        if part == 2:  # ReLU: has no parameters, so a key here is unknown
            raise KeyError(key)
        return f"head.{tower}_tower.{layer}.{part}.{leaf}"
    if m := re.match(r"proposal_generator\.fcos_head\.(cls_logits|bbox_pred|ctrness)\.(weight|bias)$", key):
        return f"head.{'centerness' if m.group(1) == 'ctrness' else m.group(1)}.{m.group(2)}"
    if m := re.match(r"proposal_generator\.fcos_head\.scales\.(\d)\.scale$", key):
        return f"head.scales[{m.group(1)}]"
    if m := re.match(r"controller\.(weight|bias)$", key):
        return f"head.controller.{m.group(1)}"
    if re.match(r"mask_branch\.(refine\.\d\.[01]|tower\.\d(\.[01])?)\.(weight|bias|running_mean|running_var|"
                r"num_batches_tracked)$", key):
        return key
    raise KeyError(key)


def convert_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """AdelaiDet state dict -> this project's (float32), strictly checked against a model built
    from `cfg`. Returns (state dict, dropped source keys)."""
    from boxinst_serve.model import build_model

    target = build_model(cfg).state_dict()
    out: dict[str, torch.Tensor] = {}
    scales: dict[int, torch.Tensor] = {}
    dropped, unknown, mismatched = [], [], []
    for key, value in state.items():
        try:
            new = target_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if new is None:
            dropped.append(key)
            continue
        value = value.float() if value.is_floating_point() else value
        if new.startswith("head.scales["):
            scales[int(new[len("head.scales["):-1])] = value.reshape(-1)
            continue
        if new == "backbone.body.conv1.weight":
            value = value.flip(1)  # BGR input channels -> RGB (the network takes RGB)
        if new in target and tuple(target[new].shape) != tuple(value.shape):
            mismatched.append(f"{key} {tuple(value.shape)} -> {new} {tuple(target[new].shape)}")
            continue
        if new in out:
            unknown.append(f"{key} (maps onto '{new}' a second time)")
            continue
        out[new] = value.to(target[new].dtype) if new in target else value
    if scales:
        if sorted(scales) != list(range(cfg.num_levels)):
            mismatched.append(f"proposal_generator.fcos_head.scales: levels {sorted(scales)}, expected "
                              f"0..{cfg.num_levels - 1}")
        else:
            out["head.scales"] = torch.cat([scales[i] for i in range(cfg.num_levels)])
    unexpected = sorted(k for k in out if k not in target)
    missing = sorted(k for k in target if k not in out)
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} source key(s) not understood: {unknown[:8]}")
    if unexpected:
        problems.append(f"{len(unexpected)} source key(s) with no place in the model: {unexpected[:8]}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {mismatched[:8]}")
    if missing:
        problems.append(f"{len(missing)} model key(s) not filled by the checkpoint: {missing[:8]}")
    if problems:
        raise CheckpointImportError("cannot import the checkpoint: " + "; ".join(problems))
    return out, dropped


def import_adelaidet(src: str | os.PathLike, out: str | os.PathLike,
                     class_names: list[str] | None = None) -> ImportReport:
    """Read an AdelaiDet checkpoint, convert it strictly and write this project's checkpoint
    (weights + ModelConfig) to `out` atomically. Returns what was imported."""
    state = read_state_dict(src)
    cfg, kind = import_config(state, class_names)
    weights, dropped = convert_state_dict(state, cfg)
    report = ImportReport(kind=kind, depth=cfg.backbone_depth, num_classes=cfg.num_classes, source_keys=len(state),
                          dropped=dropped, config=cfg)
    save_atomic({"model": weights, "model_config": cfg.to_dict(),
                 "source": {"file": Path(src).name, "format": "AdelaiDet", "kind": kind}}, out)
    log.debug("imported %s from %s into %s", report.describe(), src, out)
    return report


def load_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a json list or a text file with one name per line."""
    import json

    text = Path(path).read_text()
    names: Any = json.loads(text) if text.lstrip().startswith("[") else [ln.strip() for ln in text.splitlines()]
    names = [str(n) for n in names if str(n)]
    if not names:
        raise ValueError(f"'{path}' lists no class names")
    return names
