"""One object from images to results, the only place the inference steps are chained:

    predictor = Predictor.load("model.onnx")        # .pt checkpoint, .onnx model, OpenVINO .xml or .plan engine
    inst = predictor(image)                          # RGB uint8 [H, W, 3] -> Instances
    insts = predictor.predict_batch([a, b])          # one engine call for the batch
    insts, seconds = predictor.timed([a])            # + seconds of each stage {pre, network, post}

pre: `prepare_for` (resized to the model's test size, padded to one size divisible by its
stride); network: the engine (uint8 [B, Hp, Wp, 3] -> the network contract's padded outputs);
post: `instances_for` per image (boxes, scores, classes and masks at each image's own size).
`boxinst segment`, `video`, `bench`, `eval` and the served one-process model all run this."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from boxinst_serve.config import ModelConfig
from boxinst_serve.engines import Engine
from boxinst_serve.measure import StageClock
from boxinst_serve.postprocess import instances_for
from boxinst_serve.preprocess import prepare_for
from boxinst_serve.results import Instances


class Predictor:
    """engine: any `Engine` (torch, onnxruntime, tensorrt: a callable with `.config`); config:
    the model's ModelConfig where the engine has none of its own (the served repository's)."""

    def __init__(self, engine: Engine, config: ModelConfig | None = None):
        self.engine = engine
        self._config = config

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", engine: str | None = None,
             **engine_kwargs) -> "Predictor":
        """The engine for the file's type (engines.load_engine): .pt, .onnx, .xml (OpenVINO IR) or .plan;
        `engine` names one instead (e.g. "openvino" for an .onnx file)."""
        from boxinst_serve.engines import load_engine

        return cls(load_engine(path, device=device, engine=engine, **engine_kwargs))

    @property
    def config(self) -> ModelConfig:
        return self._config if self._config is not None else self.engine.config

    def timed(self, images: Sequence[np.ndarray]) -> tuple[list[Instances], dict[str, float]]:
        """RGB uint8 [H, W, 3] images -> (their Instances, seconds per stage {pre, network, post})."""
        clock = StageClock()
        batch, metas = prepare_for(self.config, list(images))
        clock.lap("pre")
        outputs = self.engine(batch)
        clock.lap("network")
        results = [instances_for(self.config, outputs, k, meta) for k, meta in enumerate(metas)]
        clock.lap("post")
        return results, clock.laps

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Instances]:
        """All images in one engine call (padded to one size, which changes no result)."""
        return self.timed(images)[0]

    def __call__(self, image: np.ndarray) -> Instances:
        return self.timed([image])[0][0]
