"""TensorRT plan from the exported ONNX graph (optional extra `tensorrt`, needs a CUDA GPU).

One optimisation profile (min/opt/max input shapes), FP16 optional; the plan is written next to
the ONNX file. Verified only where TensorRT and a GPU exist (see docs/deployment.md)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from boxinst_serve.config import INPUT_NAME

log = logging.getLogger(__name__)


def _require_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeError("TensorRT is not installed: `pip install 'boxinst-serve[tensorrt]'` on a machine with "
                           "an NVIDIA GPU and driver") from e
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = True  # let TensorRT itself report a missing GPU
    if not has_gpu:
        raise RuntimeError("building a TensorRT engine needs a CUDA GPU, and none is visible here")
    return trt


def build_engine(onnx_path: str | os.PathLike, min_shape: tuple[int, int, int], opt_shape: tuple[int, int, int],
                 max_shape: tuple[int, int, int], fp16: bool = False, workspace_gib: float = 4.0,
                 out_path: str | os.PathLike | None = None) -> Path:
    """Build a plan for input shapes (batch, height, width) in [min, max], tuned for opt.
    Returns the plan path (default: model.plan beside the ONNX file, or model_fp16.plan)."""
    trt = _require_tensorrt()
    onnx_path = Path(onnx_path)
    out = Path(out_path) if out_path else onnx_path.with_name(onnx_path.stem + ("_fp16" if fp16 else "") + ".plan")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse '{onnx_path}': {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (*min_shape, 3), (*opt_shape, 3), (*max_shape, 3))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from '{onnx_path}' (see the log above)")
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(bytes(plan))
    os.replace(tmp, out)
    # The plan cannot carry ONNX metadata: keep the model config beside it.
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    out.with_suffix(".json").write_text(meta.get("model_config", "{}"))
    log.info("wrote %s (fp16=%s, profile min %s opt %s max %s)", out, fp16, min_shape, opt_shape, max_shape)
    return out
