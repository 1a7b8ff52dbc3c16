"""The one-process model for raw frames on CPU-only servers, `boxinst_raw_fused`, written beside
`boxinst_net` by `boxinst export --triton DIR --flavour cpu` (and removed by the GPU flavours,
whose repositories keep only the `boxinst_raw` ensemble).

It has the `boxinst_raw` ensemble's inputs and outputs (tests/test_serving.py checks them against
the committed ensemble) and runs its three steps in one Python-backend process
(boxinst_serve.fused.FramePipeline); the client sends raw frames to it where the server has it.
Why: on a CPU server every ensemble step is a process of its own, and handing the frame, the
network outputs and the results from one to the next cost more than the pre- and post-processing
themselves (docs/benchmarks.md)."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from boxinst_serve.files import replace_dir
from boxinst_serve.frames import FUSED_RAW_MODEL

log = logging.getLogger(__name__)
MODEL_TEMPLATE = Path(__file__).resolve().parent / "triton" / "raw_fused_cpu.py"


def fused_raw_config(max_batch_size: int = 8, intra_op_threads: int = 0, intra_op_spinning: bool = False,
                     max_pixels: int = 0) -> str:
    """config.pbtxt text of boxinst_raw_fused. A dynamic batcher for its queue (the bounded queue and
    deadline, boxinst_serve/serving/queue.py), with batches of one: each request is executed (and
    answered) on its own, as soon as its frame is done; max_batch_size as the ensemble's, so that
    a request of several frames gets the same error (one frame per request)."""
    return "\n".join([
        "# Raw RGB uint8 frame in, instances out: the boxinst_raw ensemble's inputs, outputs and errors, its three",
        "# steps in this one process (written by `boxinst export --flavour cpu`; export/triton_fused.py).",
        f'name: "{FUSED_RAW_MODEL}"',
        'backend: "python"',
        f"max_batch_size: {max_batch_size}",
        "# Batches of one (a batch's responses would all wait for its last frame); the batcher holds the queue policy.",
        "dynamic_batching { preferred_batch_size: [ 1 ] }",
        "input [",
        '  { name: "image", data_type: TYPE_UINT8, dims: [ -1, -1, 3 ] },',
        '  { name: "mask_format", data_type: TYPE_STRING, dims: [ 1 ], optional: true }',
        "]",
        "output [",
        '  { name: "num_instances", data_type: TYPE_INT32, dims: [ 1 ] },',
        '  { name: "boxes", data_type: TYPE_FP32, dims: [ -1, 4 ] },',
        '  { name: "scores", data_type: TYPE_FP32, dims: [ -1 ] },',
        '  { name: "classes", data_type: TYPE_INT32, dims: [ -1 ] },',
        '  { name: "masks_rle", data_type: TYPE_STRING, dims: [ -1 ] },',
        '  { name: "image_size", data_type: TYPE_INT32, dims: [ 2 ] },',
        '  { name: "masks", data_type: TYPE_UINT8, dims: [ -1, -1, -1 ] }',
        "]",
        "instance_group [ { count: 1, kind: KIND_CPU } ]",
        "parameters [",
        "  # Frame-size limit in pixels: 0 keeps the serving default (as boxinst_preprocess_raw's).",
        f'  {{ key: "max_pixels", value: {{ string_value: "{max_pixels}" }} }},',
        "  # ONNX Runtime as boxinst_net runs it (export/triton.py).",
        f'  {{ key: "intra_op_threads", value: {{ string_value: "{intra_op_threads}" }} }},',
        f'  {{ key: "intra_op_spinning", value: {{ string_value: "{int(intra_op_spinning)}" }} }}',
        "]",
    ]) + "\n"


def write_fused_raw(repository: str | os.PathLike, max_batch_size: int = 8, intra_op_threads: int = 0,
                    intra_op_spinning: bool = False) -> Path:
    """REPOSITORY/boxinst_raw_fused (config.pbtxt, 1/model.py), written to a temporary folder and
    swapped in. It reads REPOSITORY/boxinst_net (model.onnx, boxinst_serving.json) when loaded."""
    repository = Path(repository)
    final = repository / FUSED_RAW_MODEL
    work = repository / f".{FUSED_RAW_MODEL}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    try:
        (work / "1").mkdir(parents=True)
        shutil.copyfile(MODEL_TEMPLATE, work / "1" / "model.py")
        (work / "config.pbtxt").write_text(fused_raw_config(max_batch_size, intra_op_threads, intra_op_spinning))
        replace_dir(work, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("wrote %s (raw frames in one process)", final)
    return final


def remove_fused_raw(repository: str | os.PathLike) -> bool:
    """Remove REPOSITORY/boxinst_raw_fused (left by an earlier `cpu` export); True if there was one.
    A GPU repository must not keep it: clients would send raw frames to ONNX Runtime on the CPU."""
    path = Path(repository) / FUSED_RAW_MODEL
    if not path.exists():
        return False
    shutil.rmtree(path)
    log.info("removed %s (a cpu-flavour model; this flavour serves raw frames through the boxinst_raw ensemble)",
             path)
    return True
