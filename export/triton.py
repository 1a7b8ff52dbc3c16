"""Write `boxinst_net` into a Triton model repository (docs/architecture.md, "Triton repository contract").

Flavours:
- `cpu`: a Python-backend model running 1/model.onnx with ONNX Runtime (the tritonserver in the
  nvidia-pytriton wheel, which `boxinst serve` starts, has only the Python backend);
- `onnxruntime`: platform onnxruntime_onnx for NVIDIA's GPU container, optionally with the
  TensorRT execution accelerator;
- `tensorrt`: platform tensorrt_plan (1/model.plan, built here with TensorRT: build it with the
  TensorRT of the container that will serve it).

With `int8` (an `Int8Options`), `cpu` and `onnxruntime` serve the INT8 QDQ copy of the graph
(export/quantize.py) as 1/model.onnx, and `tensorrt` builds an INT8 plan calibrated on the same
images (export/tensorrt.py).

The `cpu` flavour also writes `boxinst_raw_fused` beside it (raw frames in one process,
export/triton_fused.py); the others remove it. Every flavour also gets boxinst_serving.json
(model config, class names, frame-size limit), which the pre- and post-processing steps read, and
the class names in its config parameters. Every path pads a request to its own size, as in process.
Every model that queues requests (the steps, the network, the one-process model) gets the bounded
queue and deadline of a QueuePolicy (boxinst_serve/serving/queue.py; its defaults unless told).

The ensembles and the Python steps around `boxinst_net` (model_repository/ of this project) come
with the package: the export copies each file of theirs that the repository lacks, and keeps (and
names) the ones a user changed, so that `pip install` then `export --triton DIR` gives a complete
repository.
"""
from __future__ import annotations

import filecmp
import json
import logging
import os
import shutil
from pathlib import Path

from boxinst_serve.config import INPUT_NAME, ModelConfig
from boxinst_serve.files import replace_dir
from boxinst_serve.protocol import ENSEMBLE_MODEL, FUSED_RAW_MODEL, NET_MODEL, OPTIONAL_MODELS, REQUIRED_MODELS
from boxinst_serve.serving import ServingConfig
from boxinst_serve.serving.queue import QueuePolicy, apply_queue_policy, without_queue_policy
from export.quantize import Int8Options

log = logging.getLogger(__name__)
FLAVOURS = ("cpu", "openvino", "onnxruntime", "tensorrt")
# The Python-backend flavours (the CPU server of `boxinst serve`) and the network step each copies.
PYTHON_FLAVOURS = ("cpu", "openvino")
CPU_MODEL_TEMPLATE = Path(__file__).resolve().parent / "triton" / "net_onnxruntime_cpu.py"
OPENVINO_MODEL_TEMPLATE = Path(__file__).resolve().parent / "triton" / "net_openvino_cpu.py"
# The models of the packaged model_repository/ (packaged_repository): all but the network and the
# one-process model, which exports write.
PACKAGED_MODELS = tuple(m for m in REQUIRED_MODELS + OPTIONAL_MODELS if m not in (NET_MODEL, FUSED_RAW_MODEL))
# How long the dynamic batcher holds a request for others to join its batch. On a GPU a batch of 8
# costs little more than one, so 1 ms of waiting pays under load. On the CPU a batch costs its
# size in time (docs/benchmarks.md, video), so waiting only adds latency: requests that arrive
# while the network runs are batched anyway.
BATCH_DELAY_US = {"cpu": 0, "openvino": 0, "onnxruntime": 1000, "tensorrt": 1000}


def net_config(cfg: ModelConfig, flavour: str, max_batch_size: int = 8, instances: int = 1,
               trt_accelerator: bool = False, fp16: bool = False, intra_op_threads: int = 0,
               intra_op_spinning: bool = False, int8: bool = False) -> str:
    """config.pbtxt text of boxinst_net for a flavour (inputs/outputs as the network contract)."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    k = cfg.max_detections
    head = {"cpu": 'backend: "python"', "openvino": 'backend: "python"',
            "onnxruntime": 'platform: "onnxruntime_onnx"', "tensorrt": 'platform: "tensorrt_plan"'}[flavour]
    # The contract's num_detections is [B]: Triton needs dims [1] reshaped to [] for that.
    num_reshape = "" if flavour in PYTHON_FLAVOURS else ", reshape: { shape: [ ] }"
    kind = "KIND_CPU" if flavour in PYTHON_FLAVOURS else "KIND_GPU"
    lines = [
        f'name: "{NET_MODEL}"',
        head,
        f"max_batch_size: {max_batch_size}",
        f"dynamic_batching {{ max_queue_delay_microseconds: {BATCH_DELAY_US[flavour]} }}",
        "input [",
        f'  {{ name: "{INPUT_NAME}", data_type: TYPE_UINT8, dims: [ -1, -1, 3 ] }}',
        "]",
        "output [",
        f'  {{ name: "num_detections", data_type: TYPE_INT32, dims: [ 1 ]{num_reshape} }},',
        f'  {{ name: "boxes", data_type: TYPE_FP32, dims: [ {k}, 4 ] }},',
        f'  {{ name: "scores", data_type: TYPE_FP32, dims: [ {k} ] }},',
        f'  {{ name: "classes", data_type: TYPE_INT32, dims: [ {k} ] }},',
        f'  {{ name: "masks", data_type: TYPE_UINT8, dims: [ {k}, -1, -1 ] }}',
        "]",
        f"instance_group [ {{ count: {instances}, kind: {kind} }} ]",
        "parameters [",
        f'  {{ key: "class_names", value: {{ string_value: {json.dumps(json.dumps(cfg.class_names))} }} }},',
        f'  {{ key: "intra_op_threads", value: {{ string_value: "{intra_op_threads}" }} }},',
        # cpu flavour: ONNX Runtime's idle threads busy-wait by default, which takes the cores from
        # the post-processing step and Triton's threads just when they run (docs/benchmarks.md).
        f'  {{ key: "intra_op_spinning", value: {{ string_value: "{int(intra_op_spinning)}" }} }}',
        "]",
    ]
    if flavour == "onnxruntime" and trt_accelerator:
        # INT8: the graph carries its own Q/DQ scales, which TensorRT's execution provider uses.
        precision = "INT8" if int8 else ("FP16" if fp16 else "FP32")
        lines += [
            "optimization { execution_accelerators { gpu_execution_accelerator : [ {",
            '  name : "tensorrt"',
            f'  parameters {{ key: "precision_mode" value: "{precision}" }}',
            '  parameters { key: "max_workspace_size_bytes" value: "4294967296" }',
            "} ] } }",
        ]
    return "\n".join(lines) + "\n"


def packaged_repository() -> Path:
    """The folder of the packaged model_repository/ (the ensembles' configs and the steps' files): in a
    wheel, boxinst_serve/_model_repository (pyproject.toml maps the top-level folder in); in a
    checkout (an editable install, or the source tree on sys.path), the top-level folder itself."""
    import boxinst_serve

    package = Path(boxinst_serve.__file__).resolve().parent
    for folder in (package / "_model_repository", package.parent / "model_repository"):
        if (folder / ENSEMBLE_MODEL / "config.pbtxt").is_file():
            return folder
    raise FileNotFoundError(f"boxinst_serve at {package} carries no model_repository/ (the ensembles and steps): "
                            "reinstall boxinst-serve")


def add_packaged_models(repository: str | os.PathLike) -> list[Path]:
    """Copy into `repository` each file of the packaged ensembles and steps that it lacks (config.pbtxt,
    1/model.py, the ensembles' empty version folders). A file already there is kept as it is: where
    it differs from the packaged one (a user's edit, or a copy from another version), a warning
    names it. Returns the files written."""
    repository = Path(repository)
    source = packaged_repository()
    written, kept = [], []
    for name in PACKAGED_MODELS:
        for src in sorted(p for p in (source / name).rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            dest = repository / src.relative_to(source)
            if dest.exists():
                if not _same_file(src, dest):
                    kept.append(dest)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
            written.append(dest)
    if written:
        log.info("added to %s from the package (%s): %s", repository, source,
                 ", ".join(str(p.relative_to(repository)) for p in written))
    if kept:
        log.warning("in %s, these files differ from this package's (%s) and were kept as they are: %s (delete "
                    "them and export again for the packaged ones)", repository, source,
                    ", ".join(str(p.relative_to(repository)) for p in kept))
    return written


def _same_file(packaged: Path, present: Path) -> bool:
    """Whether a repository's file is the packaged one; a config.pbtxt's queue policy does not
    count (the export and `boxinst serve` write it)."""
    if packaged.name != "config.pbtxt":
        return filecmp.cmp(packaged, present, shallow=False)
    return without_queue_policy(packaged.read_text()) == without_queue_policy(present.read_text())


def write_triton_net(checkpoint: str | os.PathLike, repository: str | os.PathLike, flavour: str = "cpu",
                     onnx_path: str | os.PathLike | None = None,
                     max_batch_size: int = 8, instances: int = 1, trt_accelerator: bool = False,
                     fp16: bool = False, max_pixels: int | None = None, intra_op_threads: int = 0,
                     int8: Int8Options | None = None, queue: QueuePolicy | None = None) -> Path:
    """Export (or reuse `onnx_path`) and write REPOSITORY/boxinst_net for `flavour`, after adding the
    packaged ensembles and steps that REPOSITORY lacks (add_packaged_models). Returns the
    boxinst_net folder. Files are written to a temporary folder and swapped in.
    int8: serve an INT8 engine calibrated as these options say (see the module docstring).
    queue: the bounded queue and deadline of every queued model (default: QueuePolicy()'s)."""
    from export.onnx import export_onnx

    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    repository = Path(repository)
    add_packaged_models(repository)  # the ensembles and steps around the network, where missing
    final = repository / NET_MODEL
    work = repository / f".{NET_MODEL}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    version = work / "1"
    version.mkdir(parents=True)
    try:
        if onnx_path is None:
            onnx_file = export_onnx(checkpoint, version)
        else:
            onnx_file = version / "model.onnx"
            shutil.copyfile(onnx_path, onnx_file)
        from boxinst_serve.engines.onnxruntime_engine import OnnxRuntimeEngine

        cfg = OnnxRuntimeEngine(onnx_file).config  # the config the graph was exported with
        if flavour == "openvino":
            from export.openvino import convert_onnx, quantize_ir

            if int8 is not None:  # NNCF's INT8 of the graph (export/openvino.py), not ONNX Runtime's
                quantize_ir(onnx_file, int8, version, "model.xml")
            else:
                convert_onnx(onnx_file, version)
            shutil.copyfile(OPENVINO_MODEL_TEMPLATE, version / "model.py")
            onnx_file.unlink()
        elif int8 is not None and flavour != "tensorrt":
            from export.quantize import quantize_exported

            fp32_file = onnx_file.with_name("model_fp32.onnx")
            os.replace(onnx_file, fp32_file)
            quantize_exported(fp32_file, int8, onnx_file)
            fp32_file.unlink()
        if flavour == "cpu":
            shutil.copyfile(CPU_MODEL_TEMPLATE, version / "model.py")
        elif flavour == "tensorrt":
            from export.tensorrt import build_engine, serving_profile

            calibration = None
            if int8 is not None and int8.calibration:
                from export.calibration import CalibrationImages

                calibration = CalibrationImages.from_coco(int8.calibration, cfg, int8.num_images, int8.images_dir,
                                                          same_shape=True, drop_last=True)
            build_engine(onnx_file, *serving_profile(cfg, max_batch_size),
                         fp16=fp16, out_path=version / "model.plan", int8=int8 is not None, calibration=calibration,
                         calibration_cache=int8.cache if int8 is not None else None,
                         int8_exclude=int8.exclude if int8 is not None else None)
            (version / "calibration.cache").unlink(missing_ok=True)
            onnx_file.unlink()
            (version / "model.json").unlink(missing_ok=True)
        (work / "config.pbtxt").write_text(net_config(cfg, flavour, max_batch_size, instances, trt_accelerator, fp16,
                                                      intra_op_threads, int8=int8 is not None))
        serving = ServingConfig(model=cfg) if max_pixels is None else ServingConfig(model=cfg, max_pixels=max_pixels)
        serving.save(work)
        replace_dir(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from export.triton_fused import remove_fused_raw, write_fused_raw

    if flavour == "cpu":  # raw frames in one process: no hand-offs between Python-backend steps
        write_fused_raw(repository, max_batch_size, intra_op_threads)
    else:
        remove_fused_raw(repository)
    queue = QueuePolicy() if queue is None else queue
    apply_queue_policy(repository, queue)
    log.info("wrote %s (%s flavour%s; queue: %d per instance, deadline %d ms)", final, flavour,
             ", INT8" if int8 else "", queue.per_instance, queue.timeout_ms)
    return final
