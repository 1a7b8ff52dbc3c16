"""PyTorch engine: runs a checkpoint in-process."""
from __future__ import annotations

import os

import numpy as np
import torch

from boxinst_serve.checkpoint import load_model
from boxinst_serve.config import OUTPUT_NAMES
from boxinst_serve.engines import check_images
from boxinst_serve.model.detect import InferenceModel


class TorchEngine:
    """engine(images uint8 [B, H, W, 3]) -> dict of numpy arrays (network contract)."""

    def __init__(self, checkpoint: str | os.PathLike, device: str = "cpu"):
        self.device = torch.device(device)
        self._use(load_model(checkpoint, self.device))

    @classmethod
    def from_model(cls, model: torch.nn.Module, device: str | torch.device = "cpu") -> "TorchEngine":
        """The engine of a model already in memory (a CondInst on `device`), e.g. while training."""
        engine = cls.__new__(cls)
        engine.device = torch.device(device)
        engine._use(model)
        return engine

    def _use(self, model: torch.nn.Module) -> None:
        self.config = model.cfg
        self.net = InferenceModel(model).eval()

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        check_images(images, self.config.size_divisibility)
        outputs = self.net(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        return {name: t.cpu().numpy() for name, t in zip(OUTPUT_NAMES, outputs)}
