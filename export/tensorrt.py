"""TensorRT plan from the exported ONNX graph (optional extra `tensorrt`, needs a CUDA GPU).

One optimisation profile (min/opt/max input shapes), FP16 optional, INT8 optional: calibrated by
TensorRT's entropy calibrator (IInt8EntropyCalibrator2) on the same calibration images as the ONNX
Runtime INT8 graph (export/calibration.py), with a calibration cache file that later builds reuse
instead of reading images again. The plan is written next to the ONNX file. Verified only where
TensorRT and a GPU exist (see docs/deployment.md, docs/results.md)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from boxinst_serve.config import INPUT_NAME
from export.calibration import CalibrationImages

log = logging.getLogger(__name__)


def require_tensorrt():
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


def entropy_calibrator(trt, batches: CalibrationImages | None, cache_path: str | os.PathLike):
    """An IInt8EntropyCalibrator2 feeding `batches` (uint8 [B, H, W, 3], all of one shape: the
    calibration profile's) through CUDA memory; it reads the calibration cache at CACHE_PATH when
    it exists (then no image is read) and writes it (atomically) after calibrating."""
    import torch

    cache_path = Path(cache_path)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._batches = iter(batches) if batches is not None else iter(())
            self._device_batch = None  # kept alive until TensorRT asks for the next batch
            self.batches_read = 0

        def get_batch_size(self) -> int:
            return batches.batch_size if batches is not None else 1

        def get_batch(self, names):
            batch = next(self._batches, None)
            if batch is None:
                return None
            self._device_batch = torch.from_numpy(batch).cuda()
            self.batches_read += 1
            return [int(self._device_batch.data_ptr())] * len(names)

        def read_calibration_cache(self):
            if cache_path.is_file():
                log.info("INT8: using the calibration cache %s", cache_path)
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache) -> None:
            tmp = cache_path.with_name(cache_path.name + ".tmp")
            tmp.write_bytes(bytes(cache))
            os.replace(tmp, cache_path)
            log.info("INT8: wrote the calibration cache %s", cache_path)

    return EntropyCalibrator()


def serving_profile(cfg, max_batch_size: int) -> tuple[tuple[int, int, int], ...]:
    """(min, opt, max) (batch, height, width) of an engine that serves every image as `prepare_for`
    pads it (its own size rounded up to the size divisibility): min one divisibility step square
    (a very wide or tall image, capped by max_size_test, has a short side below min_size_test), opt
    one landscape image at the test size, max `max_batch_size` images as large as the long side
    allows on both axes (landscape and portrait)."""
    from boxinst_serve.config import padded_size

    d = cfg.size_divisibility
    short, long = padded_size(cfg.min_size_test, d), padded_size(cfg.max_size_test, d)
    return (1, d, d), (1, short, long), (max_batch_size, long, long)


def build_engine(onnx_path: str | os.PathLike, min_shape: tuple[int, int, int], opt_shape: tuple[int, int, int],
                 max_shape: tuple[int, int, int], fp16: bool = False, workspace_gib: float = 4.0,
                 out_path: str | os.PathLike | None = None, int8: bool = False,
                 calibration: CalibrationImages | None = None, calibration_cache: str | os.PathLike | None = None,
                 int8_exclude: tuple[str, ...] | None = None) -> Path:
    """Build a plan for input shapes (batch, height, width) in [min, max], tuned for opt.
    Returns the plan path (default: model.plan beside the ONNX file, or model_fp16.plan / model_int8.plan).

    int8: INT8 kernels where TensorRT finds them faster (FP16 too with fp16, else FP32 elsewhere),
    calibrated on `calibration` (batches of one shape: CalibrationImages with same_shape, each image
    padded to its own size as at inference) or read from `calibration_cache` (default: calibration.cache beside the plan);
    int8_exclude: groups of export.quantize.EXCLUDE_GROUPS kept out of INT8 (default: the same as
    the ONNX Runtime INT8 graph)."""
    if int8 and calibration is None and not (calibration_cache and Path(calibration_cache).is_file()):
        raise ValueError("an INT8 TensorRT build needs calibration images (--calibration DATA.json) or an existing "
                         "calibration cache")
    trt = require_tensorrt()
    onnx_path = Path(onnx_path)
    suffix = "_int8" if int8 else ("_fp16" if fp16 else "")
    out = Path(out_path) if out_path else onnx_path.with_name(onnx_path.stem + suffix + ".plan")
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
    if int8:
        _configure_int8(trt, builder, network, config, onnx_path, out, fp16, calibration, calibration_cache,
                        int8_exclude, opt_shape)
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
    log.info("wrote %s (fp16=%s, int8=%s, profile min %s opt %s max %s)", out, fp16, int8, min_shape, opt_shape,
             max_shape)
    return out


def _configure_int8(trt, builder, network, config, onnx_path: Path, plan_path: Path, fp16: bool,
                    calibration: CalibrationImages | None, calibration_cache, exclude,
                    opt_shape: tuple[int, int, int]) -> None:
    """INT8 flag, the entropy calibrator with its calibration profile (one shape: the calibration
    batches', or the opt shape when only the cache is read), and the excluded convolutions pinned
    to FP16/FP32."""
    import onnx

    from export.quantize import DEFAULT_EXCLUDE, excluded_nodes

    cache = Path(calibration_cache) if calibration_cache else plan_path.with_name("calibration.cache")
    config.set_flag(trt.BuilderFlag.INT8)
    shape = (*opt_shape, 3)
    if calibration is not None:
        if not calibration.same_shape or not calibration.drop_last:
            raise ValueError("TensorRT calibrates at one input shape: give CalibrationImages same_shape and drop_last")
        first = next(iter(calibration), None)
        if first is None:
            raise ValueError(f"INT8 calibration got no batch of {calibration.batch_size} images")
        shape = tuple(first.shape)
    calib_profile = builder.create_optimization_profile()
    calib_profile.set_shape(INPUT_NAME, shape, shape, shape)
    config.set_calibration_profile(calib_profile)
    config.int8_calibrator = entropy_calibrator(trt, calibration, cache)
    groups = DEFAULT_EXCLUDE if exclude is None else exclude
    if groups:
        nodes = {n for v in excluded_nodes(onnx.load(str(onnx_path), load_external_data=False), groups).values()
                 for n in v}
        pinned = 0
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if layer.name in nodes or any(layer.name.startswith(n + "_") for n in nodes):
                layer.precision = trt.float16 if fp16 else trt.float32
                pinned += 1
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        log.info("INT8: %d TensorRT layers of %d excluded ONNX convolutions (%s) kept in %s", pinned, len(nodes),
                 ", ".join(groups), "FP16" if fp16 else "FP32")
        if pinned == 0:
            log.warning("INT8: no TensorRT layer is named after the excluded ONNX nodes; they may run in INT8")
