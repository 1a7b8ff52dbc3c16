"""OpenVINO engine: runs the exported model.onnx as it is, or the OpenVINO IR (model.xml + model.bin)
that `boxinst export --format openvino` writes. Verified on CPU (docs/deployment.md, "OpenVINO")."""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

from boxinst_serve.config import INPUT_NAME, OUTPUT_NAMES, ModelConfig
from boxinst_serve.engines import check_images

INSTALL_HINT = "pip install 'boxinst-serve[openvino]'"
# Where the metadata (model_config, class_names, contract_version, producer) sits in the model's
# rt_info: the IR written by `boxinst export --format openvino` keeps it under "boxinst"; OpenVINO's
# ONNX reader puts an .onnx file's metadata_props under "framework" (and so does an IR converted
# from the ONNX file by other tools).
METADATA_SECTIONS = ("boxinst", "framework")
METADATA_KEYS = ("model_config", "class_names", "contract_version", "producer")


def require_openvino():
    """The openvino module, or ImportError saying how to install it."""
    try:
        import openvino
    except ImportError as e:
        raise ImportError(f"the OpenVINO engine needs the openvino package: `{INSTALL_HINT}`") from e
    return openvino


@functools.cache
def shared_core():
    """The process's one openvino.Core, never freed: every OpenVINO model here is read and compiled
    with it.

    OpenVINO's CPU plugin gives the thread that uses a Core a signal stack of its own and, when
    that Core goes, puts back the one it found (openvino PR 11894, "signal stack management for
    AMX") and frees its own. Two Cores freed in another order than they came leave the thread on a
    freed stack, and the next signal handled there (the SIGCHLD of a child that exits) kills the
    process with SIGSEGV before any handler runs: the test suite died so, without a traceback, after
    the OpenVINO tests (tests/test_openvino.py, the signal-stack test). One Core keeps the stacks nested."""
    return require_openvino().Core()


def model_metadata(model) -> dict[str, str]:
    """The boxinst metadata in an openvino.Model's rt_info (the first section of METADATA_SECTIONS
    that has a model_config), as strings, with "quantization" for an INT8 IR
    (export/openvino.py quantize_ir); {} when there is none."""
    for section in METADATA_SECTIONS:
        if model.has_rt_info([section, "model_config"]):
            return {key: model.get_rt_info([section, key]).astype(str) for key in (*METADATA_KEYS, "quantization")
                    if model.has_rt_info([section, key])}
    return {}


class OpenVINOEngine:
    """engine(images uint8 [B, H, W, 3]) -> dict of numpy arrays (network contract).

    path: an exported model.onnx (read by OpenVINO directly) or an IR model.xml (model.bin beside
    it). device: "cpu" or an OpenVINO device name ("CPU", "GPU", ...; only the CPU is verified).
    threads: OpenVINO's inference_num_threads (0 = OpenVINO's default). Inference runs in fp32
    (the inference_precision hint): OpenVINO's CPU default is bf16 on CPUs that have it, which
    would move scores and masks past the network contract's parity with ONNX Runtime. `precision`
    None leaves the plugin's own choice (faster where bf16 is; not held to the parity tolerances).
    Dynamic batch, height and width, as exported; every call gets its own infer request, so the
    engine may be called from several threads."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int = 0, precision: str | None = "f32"):
        require_openvino()  # names the extra where openvino is missing, whether or not a Core was made before
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"'{path}' does not exist")
        if device.lower().startswith("cuda"):
            raise ValueError("the OpenVINO engine runs on the CPU (device 'cpu'); for an NVIDIA GPU use "
                             "onnxruntime with --device cuda, or tensorrt")
        if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").exists():
            raise FileNotFoundError(f"'{path.with_suffix('.bin')}' (the weights of the OpenVINO IR '{path}') is "
                                    "missing: export it again with `boxinst export --format openvino`")
        core = shared_core()
        model = core.read_model(str(path))
        meta = model_metadata(model)
        if "model_config" not in meta:
            raise ValueError(f"'{path}' has no boxinst model_config in its metadata: export it with `boxinst export`")
        self.config = ModelConfig.from_json(meta["model_config"])
        self.class_names = json.loads(meta.get("class_names", "[]"))
        self.contract_version = meta.get("contract_version")
        ov_device = "CPU" if device.lower() == "cpu" else device
        properties = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, ov_device, properties)
        self._outputs = {name: self.compiled.output(name) for name in OUTPUT_NAMES}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        check_images(images, self.config.size_divisibility)
        results = self.compiled.create_infer_request().infer({INPUT_NAME: np.ascontiguousarray(images)})
        return {name: results[port] for name, port in self._outputs.items()}
