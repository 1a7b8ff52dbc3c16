"""Training configuration (saved into every checkpoint beside the ModelConfig)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SUPERVISION_MODES = ("box", "mask", "mixed")
# How instances without a GT mask are supervised: the BoxInst losses, the projection term alone
# (ablation), dice against the filled box (the paper's naive baseline), or not at all ("none":
# detection losses only, for the ablation's shared detector pre-training).
BOX_LOSSES = ("boxinst", "projection", "filled_box", "none")
HOLE_NORMALIZERS = ("box", "holes")  # what the hole loss is divided by (training/hole_loss.py)

# The paper's COCO schedule: 90k iterations, warm-up 1000, steps at 60k and 80k, pairwise warm-up 10k.
REFERENCE_ITERS = 90000
# Spacing of the multi-scale training short sides (the paper's 640, 672, ..., 800).
SCALE_STEP_PX = 32
# The paper's learning rate and the batch it is for. A config without its own `lr` uses it at any
# batch, as AdelaiDet and detectron2 do unless told to scale it (REFERENCE_WORLD_SIZE). Measured on
# the demo recipe (docs/results.md, "Box-only training over seeds"): scaled linearly to lite's CPU
# batch of 4 (0.0025), the masks stayed blobs no better than the boxes on 2 of 3 seeds; at 0.01
# with the pairwise warm-up below they beat the boxes on every seed.
REFERENCE_LR = 0.01
REFERENCE_BATCH_SIZE = 16
# The pairwise term's warm-up is the paper's 10k of 90k iterations scaled to a schedule, but never
# shorter than this (or a third of a shorter schedule): scaled to the demo's 1200 iterations it
# would be 133, and the pairwise term ("neighbours of one colour share a label") then acts on a
# mask head that has not yet learned from the projection term where the box is; its easiest
# answer is one label everywhere (masks that saturate or fill their boxes). Measured: at lr 0.01,
# warm-up 133 saturated seed 0 on an AMD EPYC; warm-up 400 beat the boxes on every seed here.
MIN_PAIRWISE_WARMUP_ITERS = 400


def linear_lr(batch_size: int) -> float:
    """The paper's learning rate scaled linearly to `batch_size` images per iteration (Goyal et
    al.): `--lr` takes it; not the default (measured worse for box-only training, REFERENCE_LR)."""
    return REFERENCE_LR * batch_size / REFERENCE_BATCH_SIZE


def scaled_pairwise_warmup(reference_iters: int, iters: int) -> int:
    """The pairwise warm-up of a schedule of `iters`: `reference_iters` (of the paper's 90k)
    scaled, but at least MIN_PAIRWISE_WARMUP_ITERS or a third of the schedule, whichever is less."""
    return max(1, round(reference_iters * iters / REFERENCE_ITERS), min(MIN_PAIRWISE_WARMUP_ITERS, iters // 3))


@dataclass(frozen=True)
class Recipe:
    """Training defaults of a model preset on a device type: what `boxinst train` uses for every
    flag that is not given. The training image sizes are not stored here: they derive from the
    model's test size (`train_sizes`), so that a model trains at the scales it is tested at."""

    batch_size: int  # images per iteration, all processes together
    num_scales: int  # training short sides: min_size_test - SCALE_STEP_PX * k, k < num_scales
    num_workers: int  # data-loading processes per training process


# The one table of training defaults. The paper's recipe (batch 16, short side 640..800, long side
# <= 1333) for the presets on CUDA; `lite`, the CPU preset, at a CPU-sized batch and its
# own small test size (short side 192..256, long side <= 448: what `make demo` trains at), so 2
# cores train it at well under 2 s per iteration; `nano`, the real-time CPU preset, the same way
# (its convergence on the shapes not yet measured); a big preset on a CPU at batch 2 (the memory
# guard of training/memory.py says whether even that fits).
RECIPES: dict[tuple[str, str], Recipe] = {
    ("lite", "cpu"): Recipe(batch_size=4, num_scales=3, num_workers=1),
    ("lite", "cuda"): Recipe(batch_size=16, num_scales=3, num_workers=4),
    ("nano", "cpu"): Recipe(batch_size=4, num_scales=3, num_workers=1),
    ("nano", "cuda"): Recipe(batch_size=16, num_scales=3, num_workers=4),
    ("r50_fpn", "cuda"): Recipe(batch_size=16, num_scales=6, num_workers=4),
    ("r101_fpn", "cuda"): Recipe(batch_size=16, num_scales=6, num_workers=4),
    ("r50_fpn", "cpu"): Recipe(batch_size=2, num_scales=6, num_workers=1),
    ("r101_fpn", "cpu"): Recipe(batch_size=2, num_scales=6, num_workers=1),
}


def recipe(model_name: str, device_type: str) -> Recipe:
    """The defaults of a preset on "cpu" or "cuda" (a model name without its own row gets the
    R-50 row of that device)."""
    device_type = "cuda" if device_type == "cuda" else "cpu"
    return RECIPES.get((model_name, device_type), RECIPES[("r50_fpn", device_type)])


def train_sizes(min_size_test: int, max_size_test: int, num_scales: int) -> tuple[tuple[int, ...], int]:
    """Multi-scale training sizes for a test size: the short sides min_size_test - 32k for
    k < num_scales (ascending, none below 32) and the test's long-side cap. The paper: 800/1333
    with 6 scales -> (640, 672, 704, 736, 768, 800), 1333. Images are never resized beyond them."""
    sides = sorted({max(min_size_test - SCALE_STEP_PX * k, SCALE_STEP_PX) for k in range(num_scales)})
    return tuple(sides), max_size_test


@dataclass
class LossConfig:
    supervision: str = "box"
    box_loss: str = "boxinst"
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    topk_proposals_per_image: int = 64
    pairwise_size: int = 3
    pairwise_dilation: int = 2
    # tau: 0.3 in the release configs; the paper's ablation used 0.1.
    pairwise_color_thresh: float = 0.3
    pairwise_theta: float = 2.0
    pairwise_warmup_iters: int = 10000
    bottom_pixels_removed: int = 10
    # Mixed supervision: read the masks of these classes only (names; empty: every class's masks
    # the json has). The other classes never read a mask (the paper's semi-supervised split).
    mask_classes: tuple[str, ...] = ()
    # The opt-in loss for enclosed background (training/hole_loss.py): 0 = off (the paper's BoxInst).
    hole_loss_weight: float = 0.0
    hole_color_thresh: float = 0.1
    hole_margin: int = 2
    # Iteration (of the reference schedule, scaled like the warm-ups) from which the hole loss
    # applies; the default, 1/3 of it, is the measured recipe (docs/results.md: ring mask AP 17.8
    # -> 33.0, the other categories +2.8). Once masks exist the heads can tell a hole's colour from
    # the object's; from iteration 0 with the "holes" normaliser they learned "the middle of a box is
    # background" instead and every mask collapsed to an outline.
    hole_loss_start_iters: int = REFERENCE_ITERS // 3
    # What the summed hole loss is divided by: "box" (all box pixels, as the pairwise term) or
    # "holes" (the hole pixels: their mean; measured to collapse every mask, docs/results.md).
    hole_normalize: str = "box"

    def __post_init__(self) -> None:
        self.mask_classes = tuple(self.mask_classes)
        if self.mask_classes and self.supervision != "mixed":
            raise ValueError("mask_classes needs supervision 'mixed'")
        if self.supervision not in SUPERVISION_MODES:
            raise ValueError(f"supervision must be one of {SUPERVISION_MODES}, got {self.supervision!r}")
        if self.hole_normalize not in HOLE_NORMALIZERS:
            raise ValueError(f"hole_normalize must be one of {HOLE_NORMALIZERS}, got {self.hole_normalize!r}")
        if self.box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {self.box_loss!r}")


@dataclass
class TrainConfig:
    iters: int = REFERENCE_ITERS
    batch_size: int = 16  # images per iteration over all processes
    # None: the paper's REFERENCE_LR, resolved when the config is made (and then saved as a
    # number). `lr_scaled`: True in configs of earlier versions, which scaled it linearly.
    lr: float | None = None
    lr_scaled: bool = False
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    # Learning-rate drops (x gamma) at these fractions of `iters` (60k/90k and 80k/90k).
    step_fractions: tuple[float, ...] = (2 / 3, 8 / 9)
    gamma: float = 0.1
    clip_grad_norm: float = 0.0  # 0 disables
    min_sizes: tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    max_size: int = 1333
    flip_prob: float = 0.5
    amp: bool = True  # on CUDA only
    seed: int = 0
    checkpoint_period: int = 5000
    log_period: int = 20
    max_nonfinite: int = 5  # consecutive non-finite losses before aborting
    # Healing (training/heal.py): when the collapse monitor finds a saturated mask head with enough
    # of the schedule left, go back to the last healthy window (the start of a run from scratch
    # with the controller and mask branch drawn again), multiply the mask side's learning rate by
    # heal_lr_scale and restart the pairwise warm-up; at most max_heals times. False (--no-heal):
    # only warn.
    heal: bool = True
    max_heals: int = 2
    heal_lr_scale: float = 0.25
    num_workers: int = 2
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = REFERENCE_LR
        for name in ("iters", "batch_size", "checkpoint_period", "log_period", "max_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.min_sizes or min(self.min_sizes) < 1:
            raise ValueError(f"min_sizes must be positive sizes, got {self.min_sizes}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.max_heals < 0 or not 0 < self.heal_lr_scale <= 1:
            raise ValueError(f"max_heals must be >= 0 and heal_lr_scale in (0, 1], got {self.max_heals} and "
                             f"{self.heal_lr_scale}")

    @classmethod
    def scaled(cls, iters: int, **overrides: Any) -> "TrainConfig":
        """The reference schedule scaled to `iters` (warm-ups and steps keep their proportions)."""
        f = iters / REFERENCE_ITERS
        loss = overrides.pop("loss", LossConfig())
        loss = dataclasses.replace(loss, pairwise_warmup_iters=scaled_pairwise_warmup(loss.pairwise_warmup_iters, iters),
                                   hole_loss_start_iters=round(loss.hole_loss_start_iters * f))
        base = {"iters": iters, "warmup_iters": max(1, round(1000 * f)), "loss": loss,
                "checkpoint_period": max(1, min(5000, iters // 5))}
        return cls(**{**base, **overrides})

    @classmethod
    def for_model(cls, model_name: str, min_size_test: int, max_size_test: int, device_type: str, iters: int,
                  **overrides: Any) -> "TrainConfig":
        """`scaled(iters)` with the batch, image sizes and data workers of the preset's recipe on
        this device type; `overrides` (the flags a user gave) win over the recipe."""
        r = recipe(model_name, device_type)
        min_sizes, max_size = train_sizes(min_size_test, max_size_test, r.num_scales)
        defaults = {"batch_size": r.batch_size, "min_sizes": min_sizes, "max_size": max_size,
                    "num_workers": r.num_workers}
        return cls.scaled(iters, **{**defaults, **overrides})

    def describe_lr(self) -> str:
        """The learning rate and where it comes from, for the log."""
        if self.lr_scaled:
            return (f"lr {self.lr:g} (the paper's {REFERENCE_LR:g} at batch {REFERENCE_BATCH_SIZE}, scaled linearly "
                    f"to batch {self.batch_size})")
        if self.lr == REFERENCE_LR:
            return (f"lr {self.lr:g} (the paper's, at batch {self.batch_size}: not scaled with the batch, "
                    f"docs/results.md; --lr sets it)")
        return f"lr {self.lr:g} (given)"

    def step_iters(self) -> list[int]:
        return [int(round(self.iters * s)) for s in self.step_fractions]

    def lr_factor(self, iteration: int) -> float:
        """Multiplier of `lr` at `iteration`: linear warm-up, then steps."""
        factor = self.gamma ** sum(iteration >= s for s in self.step_iters())
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            factor *= self.warmup_factor * (1 - alpha) + alpha
        return factor

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["step_fractions"] = list(self.step_fractions)
        d["min_sizes"] = list(self.min_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        loss = LossConfig(**d.pop("loss", {}))
        for k in ("step_fractions", "min_sizes"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(loss=loss, **d)


def training_model_config(config: str | None = None, init: str | None = None, min_sizes: tuple[int, ...] | None = None,
                          max_size: int | None = None, min_size_test: int | None = None,
                          max_size_test: int | None = None):
    """The ModelConfig `boxinst train` trains: the architecture of the `init` checkpoint (its preset
    may be another's, e.g. AdelaiDet's), else the preset `config` (default r50_fpn).

    The test size follows the training sizes the user gave (the paper tests at its largest training
    short side): min_size_test defaults to max(min_sizes), max_size_test to max_size; the training
    sizes of the preset's recipe then derive from the test size (TrainConfig.for_model)."""
    from boxinst_serve.config import preset

    if init:
        from boxinst_serve.checkpoint import load_checkpoint

        model_cfg = load_checkpoint(init)["model_config"]
        if config and config != model_cfg.name:
            raise ValueError(f"--config {config}, but --init '{init}' is a {model_cfg.name} model: the "
                             "architecture comes from --init, so leave --config out")
    else:
        model_cfg = preset(config or "r50_fpn")
    min_size_test = min_size_test or (max(min_sizes) if min_sizes else None)
    max_size_test = max_size_test or max_size
    if min_size_test:
        model_cfg = model_cfg.replace(min_size_test=min_size_test)
    if max_size_test:
        model_cfg = model_cfg.replace(max_size_test=max_size_test)
    return model_cfg


def training_config(model_cfg, device_type: str, iters: int, loss: LossConfig | None = None,
                    pairwise_warmup_iters: int | None = None, **flags: Any) -> TrainConfig:
    """The TrainConfig of `boxinst train`: the recipe of `model_cfg`'s preset on `device_type` at its
    test size, scaled to `iters`; `flags` whose value is None (not given) keep the recipe's value,
    the others win. pairwise_warmup_iters: the pairwise loss's warm-up, else scaled to `iters`."""
    overrides = {k: v for k, v in flags.items() if v is not None}
    train_cfg = TrainConfig.for_model(model_cfg.name, model_cfg.min_size_test, model_cfg.max_size_test, device_type,
                                      iters, loss=loss or LossConfig(), **overrides)
    if pairwise_warmup_iters is not None:
        train_cfg.loss.pairwise_warmup_iters = pairwise_warmup_iters
    return train_cfg
