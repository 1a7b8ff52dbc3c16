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

# The paper's COCO schedule: 90k iterations, warm-up 1000, steps at 60k and 80k, pairwise warm-up 10k.
REFERENCE_ITERS = 90000


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

    def __post_init__(self) -> None:
        if self.supervision not in SUPERVISION_MODES:
            raise ValueError(f"supervision must be one of {SUPERVISION_MODES}, got {self.supervision!r}")
        if self.box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {self.box_loss!r}")


@dataclass
class TrainConfig:
    iters: int = REFERENCE_ITERS
    batch_size: int = 16  # images per iteration over all processes
    lr: float = 0.01
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
    num_workers: int = 2
    loss: LossConfig = field(default_factory=LossConfig)

    @classmethod
    def scaled(cls, iters: int, **overrides: Any) -> "TrainConfig":
        """The reference schedule scaled to `iters` (warm-ups and steps keep their proportions)."""
        f = iters / REFERENCE_ITERS
        loss = overrides.pop("loss", LossConfig())
        loss = dataclasses.replace(loss, pairwise_warmup_iters=max(1, round(loss.pairwise_warmup_iters * f)))
        base = cls(iters=iters, warmup_iters=max(1, round(1000 * f)), loss=loss,
                   checkpoint_period=max(1, min(5000, iters // 5)))
        return dataclasses.replace(base, **overrides)

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
