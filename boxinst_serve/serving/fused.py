"""Camera frame to instances in one process: the work of the `boxinst_raw` ensemble's three steps
(check_frame, then the Predictor: prepare_for, the network on ONNX Runtime, instances_for) without the hand-offs
between them.

Two users, one code path: the `boxinst_raw_fused` Triton model that `boxinst export --flavour
cpu` writes for CPU-only servers (where each ensemble step is a Python-backend process of its own
and moving tensors between them costs more than the pre- and post-processing themselves,
docs/benchmarks.md), and the in-process baseline of `boxinst bench --url --input`."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from boxinst_serve.protocol import NET_MODEL, check_frame
from boxinst_serve.predictor import Predictor
from boxinst_serve.results import Instances
from boxinst_serve.serving.steps import ServingConfig

STAGES = ("pre", "network", "post")  # the ensemble's steps, in order (and the timed parts here)


def net_onnx_path(repository: str | os.PathLike) -> Path:
    """<repository>/boxinst_net/1/model.onnx, which the `cpu` and `onnxruntime` flavours hold."""
    path = Path(repository) / NET_MODEL / "1" / "model.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' is missing: the one-process model runs the ONNX graph of a `cpu` "
                                "flavour export (`boxinst export --checkpoint CKPT --triton REPOSITORY --flavour cpu`)")
    return path


def net_engine(repository: str | os.PathLike, threads: int = 0, spinning: bool = True):
    """The in-process engine of a repository's boxinst_net: OpenVINO on 1/model.xml for an
    `openvino` flavour export, else ONNX Runtime's CPU provider on 1/model.onnx (net_onnx_path).
    threads: intra-op threads (0 = the runtime's default); spinning: ONNX Runtime's only."""
    xml = Path(repository) / NET_MODEL / "1" / "model.xml"
    if xml.is_file():
        from boxinst_serve.engines.openvino_engine import OpenVINOEngine

        return OpenVINOEngine(xml, threads=threads)
    from boxinst_serve.engines.onnxruntime_engine import OnnxRuntimeEngine

    return OnnxRuntimeEngine(net_onnx_path(repository), provider="cpu", threads=threads, spinning=spinning)


@dataclass
class FramePipeline:
    """frame RGB uint8 [H, W, 3] (or [1, H, W, 3]) -> Instances at the frame's resolution.

    serving: the repository's ServingConfig (model config, frame-size limit); engine: images uint8
    [B, Hp, Wp, 3] -> the network contract's padded outputs; max_pixels: frame-size limit
    (None: serving.max_pixels). A bad frame raises ValueError with check_frame's message."""

    serving: ServingConfig
    engine: Callable[[np.ndarray], dict[str, np.ndarray]]
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        self._predictor = Predictor(self.engine, self.serving.model)

    @classmethod
    def from_repository(cls, repository: str | os.PathLike, threads: int = 0, spinning: bool = True,
                        max_pixels: int | None = None) -> "FramePipeline":
        """The served model of a repository: its ServingConfig and boxinst_net's engine (net_engine:
        ONNX Runtime's CPU provider on model.onnx, OpenVINO on an openvino export's model.xml;
        threads: intra-op threads, 0 = default; spinning: see OnnxRuntimeEngine)."""
        serving = ServingConfig.load(repository)
        engine = net_engine(repository, threads, spinning)
        return cls(serving, engine, max_pixels)

    def timed(self, frame: np.ndarray) -> tuple[Instances, dict[str, float]]:
        """-> (Instances, seconds per stage {pre (the frame check included), network, post})."""
        limit = self.serving.max_pixels if self.max_pixels is None else self.max_pixels
        t0 = time.perf_counter()
        frame = check_frame(frame, limit)
        checked = time.perf_counter() - t0
        (inst,), seconds = self._predictor.timed([frame])
        return inst, {**seconds, "pre": seconds["pre"] + checked}

    def __call__(self, frame: np.ndarray) -> Instances:
        return self.timed(frame)[0]
