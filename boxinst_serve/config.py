"""Model and inference configuration: the one source of truth for every architectural fact.

`ModelConfig` is saved inside every checkpoint (as a plain dict) and into the ONNX metadata, and
read back from there by every other part. Presets are plain functions (`r50_fpn`, `r101_fpn`,
`lite`, `nano`) collected in `PRESETS`; no registry, no string-to-class magic beyond that one dict.

This module imports only the standard library so that light clients can use it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# 2: served requests are padded to their own size (1: onto a fixed canvas, which changed the scores).
CONTRACT_VERSION = "2"

# Names of the network contract (docs/architecture.md, "Network contract"): torch module, ONNX graph and
# TensorRT engine all use these.
INPUT_NAME = "images"
OUTPUT_NAMES = ("num_detections", "boxes", "scores", "classes", "masks")

RESIZE_MODES = ("opencv", "detectron2")
# ModelConfig fields that weights do not depend on (class list, name, test-time settings).
INFERENCE_FIELDS = frozenset({"name", "num_classes", "class_names", "min_size_test", "max_size_test", "score_thresh",
                              "thresh_with_ctr", "pre_nms_topk", "nms_iou", "max_detections", "mask_threshold",
                              "resize", "clip_boxes_before_nms", "remove_empty_boxes"})

IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)


@dataclass
class ModelConfig:
    """Architecture and inference defaults of a CondInst/BoxInst model (SPEC.md, "Network")."""

    name: str = "r50_fpn"
    # Backbone: "resnet" (torchvision ResNet of `backbone_depth` 18/34/50/101, its channels times
    # `backbone_width`), or a torchvision mobile network trained from scratch ("mobilenet_v3_large",
    # "regnet_x_400mf", "shufflenet_v2_x1_0"; boxinst_serve/model/backbone.py; `backbone_depth` 0).
    backbone: str = "resnet"
    backbone_depth: int = 50
    backbone_width: float = 1.0
    # "frozen_bn" (release default, ImageNet-initialised backbones) or "bn" (trainable BatchNorm,
    # for backbones trained from scratch such as `lite`).
    backbone_norm: str = "frozen_bn"
    # Number of backbone stages frozen: 2 = stem and res2 (release default), 0 = nothing frozen.
    freeze_at: int = 2
    fpn_channels: int = 256
    # FCOS head: shared towers of `head_num_convs` x (3x3 conv, GroupNorm, ReLU).
    head_channels: int = 256
    head_num_convs: int = 4
    head_gn_groups: int = 32
    # Box-distance activation: "relu" (AdelaiDet with normalised regression targets) or "exp"
    # (the original FCOS: never zero, so no side can get stuck at a dead ReLU; used by `lite`,
    # whose backbone trains from scratch).
    bbox_activation: str = "relu"
    num_classes: int = 80
    class_names: list[str] = field(default_factory=list)
    # FPN levels P3..P7.
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    # Regression ranges of the levels: P3 [0, 64], P4 [64, 128], ..., P7 [512, inf).
    level_size_bounds: tuple[float, ...] = (64.0, 128.0, 256.0, 512.0)
    # Relative-coordinate normalisers of the levels (CondInst "sizes of interest").
    sizes_of_interest: tuple[float, ...] = (64.0, 128.0, 256.0, 512.0, 1024.0)
    center_sample_radius: float = 1.5
    # Mask branch on P3..P5.
    mask_branch_channels: int = 128
    mask_branch_num_convs: int = 4
    mask_branch_out_channels: int = 16
    # Dynamic mask head: `mask_head_layers` 1x1 convs, `mask_head_channels` hidden, 1 output.
    mask_head_channels: int = 8
    mask_head_layers: int = 3
    mask_out_stride: int = 4
    # Input normalisation (RGB, 0..255 scale), applied inside the graph.
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN_RGB
    pixel_std: tuple[float, float, float] = IMAGENET_STD_RGB
    size_divisibility: int = 32
    # Test-time resize: shorter side, capped longer side.
    min_size_test: int = 800
    max_size_test: int = 1333
    # Inference thresholds (SPEC.md, "Inference").
    score_thresh: float = 0.05
    thresh_with_ctr: bool = True
    pre_nms_topk: int = 1000
    nms_iou: float = 0.6
    max_detections: int = 100
    mask_threshold: float = 0.5
    # ---- what weights trained elsewhere need (AdelaiDet on detectron2, ../shared/ADELAIDET.md §9) ----
    # The defaults are this project's own; `boxinst import-weights` sets them for AdelaiDet models.
    # ResNet bottlenecks stride in their first 1x1 conv (MSRA/detectron2), not in the 3x3 (torchvision).
    stride_in_1x1: bool = False
    # The FCOS tower convolutions have a bias before their GroupNorm.
    head_conv_bias: bool = False
    # Pad the network input with the mean colour (rounded to uint8), as detectron2 does by padding
    # with 0 after normalising, instead of black.
    pad_with_mean: bool = False
    # Test-time resize: "opencv" (cv2 INTER_LINEAR; sizes rounded half to even) or "detectron2"
    # (PIL bilinear on uint8, antialiased when shrinking; detectron2's ResizeShortestEdge sizes).
    resize: str = "opencv"
    # Clip candidate boxes to the padded image before NMS (AdelaiDet runs NMS on unclipped boxes).
    clip_boxes_before_nms: bool = True
    # Drop detections whose box is empty once clipped to the original image (AdelaiDet's nonempty()).
    remove_empty_boxes: bool = False

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")

    # ---- derived facts -------------------------------------------------------------------
    @property
    def mask_head_in_channels(self) -> int:
        """Mask-branch features plus the two relative-coordinate channels."""
        return self.mask_branch_out_channels + 2

    @property
    def mask_head_weight_nums(self) -> list[int]:
        c, h = self.mask_head_in_channels, self.mask_head_channels
        nums = []
        for layer in range(self.mask_head_layers):
            cin = c if layer == 0 else h
            cout = 1 if layer == self.mask_head_layers - 1 else h
            nums.append(cin * cout)
        return nums

    @property
    def mask_head_bias_nums(self) -> list[int]:
        h = self.mask_head_channels
        return [1 if i == self.mask_head_layers - 1 else h for i in range(self.mask_head_layers)]

    @property
    def num_controller_params(self) -> int:
        """Output channels of the controller (233 for 18 -> 8 -> 8 -> 1)."""
        return sum(self.mask_head_weight_nums) + sum(self.mask_head_bias_nums)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def mask_branch_stride(self) -> int:
        return self.strides[0]

    def weight_differences(self, other: "ModelConfig") -> list[str]:
        """The fields, other than the class list and inference settings, in which `other`
        differs: weights of one do not compute the same features in a model built from the other."""
        return sorted(f.name for f in dataclasses.fields(self)
                      if f.name not in INFERENCE_FIELDS and getattr(self, f.name) != getattr(other, f.name))

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; is this checkpoint from a newer version?")
        kwargs = {}
        for k, v in d.items():
            default = getattr(cls(), k)
            kwargs[k] = tuple(v) if isinstance(default, tuple) else v
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "ModelConfig":
        return cls.from_dict(json.loads(s))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def r50_fpn(num_classes: int = 80) -> ModelConfig:
    """The paper's BoxInst R-50-FPN (release defaults)."""
    return ModelConfig(name="r50_fpn", backbone_depth=50, num_classes=num_classes)


def r101_fpn(num_classes: int = 80) -> ModelConfig:
    """The paper's BoxInst R-101-FPN (release defaults)."""
    return ModelConfig(name="r101_fpn", backbone_depth=101, num_classes=num_classes)


def lite(num_classes: int = 80) -> ModelConfig:
    """ResNet-18 with a narrower FPN/head, trainable BatchNorm: for CPUs, tests and the demo."""
    return ModelConfig(
        name="lite",
        backbone_depth=18,
        backbone_norm="bn",
        freeze_at=0,
        fpn_channels=64,
        head_channels=64,
        head_num_convs=2,
        head_gn_groups=16,
        bbox_activation="exp",
        num_classes=num_classes,
        mask_branch_channels=64,
        mask_branch_num_convs=2,
        # Small enough that 2 CPU cores train it at well under 2 s per iteration: `boxinst train`
        # trains at short sides 192..256 (training/config.py, RECIPES) and tests at 256.
        min_size_test=256,
        max_size_test=448,
    )


# YOLO11n-seg's FLOPs at 384x512, the budget of `nano`, by the counter of `boxinst info` (torch's
# FlopCounterMode over one forward of the module: convolutions and matrix products, 1 multiply-add =
# 2 FLOPs): ultralytics 8.4.190's yolo11n-seg.yaml (80 classes, random weights, fused or not) counts
# 4.69 GFLOPs at 384x512 and 9.80 at 640x640, as ultralytics' own counter (thop, 2 x MACs) does.
YOLO11N_SEG_GFLOPS_384X512 = 4.69


def nano(num_classes: int = 80) -> ModelConfig:
    """For real time on a CPU: ShuffleNetV2 x1.0 (trainable BatchNorm, from scratch) with a 32-channel
    FPN, FCOS head and mask branch: 2.3 GFLOPs at 384x512, half of YOLO11n-seg's
    (YOLO11N_SEG_GFLOPS_384X512). Of the candidates under that budget it ran fastest on one CPU
    thread, in PyTorch and ONNX Runtime (docs/benchmarks.md, "The nano preset"). Trains and tests
    at lite's sizes (training/config.py, RECIPES); its convergence is not yet measured."""
    # lite's recipe (BatchNorm trained from scratch, exp box activation, two-conv head and mask
    # branch, its test sizes) with the mobile backbone and a third of the widths
    return lite(num_classes).replace(name="nano", backbone="shufflenet_v2_x1_0", backbone_depth=0, fpn_channels=32,
                                     head_channels=32, head_gn_groups=8, mask_branch_channels=32)


PRESETS = {"r50_fpn": r50_fpn, "r101_fpn": r101_fpn, "lite": lite, "nano": nano}


def preset(name: str, num_classes: int = 80) -> ModelConfig:
    """Build a preset by name; the error lists the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](num_classes=num_classes)


def resized_shape(height: int, width: int, min_size: int, max_size: int, mode: str = "opencv") -> tuple[int, int]:
    """Shape after scaling the shorter side to `min_size` with the longer side capped at `max_size`.
    Returns (new_h, new_w). mode "opencv": one scale, sizes rounded half to even (this project's
    own); "detectron2": ResizeShortestEdge.get_output_shape's arithmetic exactly (the short side
    set to min_size, the long side scaled, both rescaled if over max_size, then int(x + 0.5))."""
    if mode == "detectron2":
        scale = min_size * 1.0 / min(height, width)
        new_h, new_w = (min_size, scale * width) if height < width else (scale * height, min_size)
        if max(new_h, new_w) > max_size:
            scale = max_size * 1.0 / max(new_h, new_w)
            new_h, new_w = new_h * scale, new_w * scale
        return int(new_h + 0.5), int(new_w + 0.5)
    if mode != "opencv":
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return int(round(height * scale)), int(round(width * scale))


def pad_value(cfg: ModelConfig) -> tuple[int, int, int]:
    """The uint8 RGB colour the network input is padded with: black, or the mean colour."""
    if cfg.pad_with_mean:
        return tuple(int(round(m)) for m in cfg.pixel_mean)
    return (0, 0, 0)


def padded_size(size: int, divisibility: int) -> int:
    """Smallest multiple of `divisibility` >= size."""
    return (size + divisibility - 1) // divisibility * divisibility


def network_input_hw(cfg: ModelConfig, height: int, width: int) -> tuple[int, int]:
    """(Hp, Wp) of the network input `prepare_for` makes of one height x width image under `cfg`:
    resized to its test size, padded to its size divisibility."""
    h, w = resized_shape(height, width, cfg.min_size_test, cfg.max_size_test, cfg.resize)
    return padded_size(h, cfg.size_divisibility), padded_size(w, cfg.size_divisibility)


def parse_size(text: str) -> tuple[int, int]:
    """A size as written on a command line: '512' -> (512, 512); '800x1333' -> (800, 1333) as H x W.
    An argparse `type=`: a malformed size raises argparse.ArgumentTypeError, which argparse reports
    as the usage error."""
    import argparse

    parts = text.lower().split("x")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")
