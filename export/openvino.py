"""OpenVINO IR export: the exported ONNX graph converted as it is (ov.convert_model), the network
contract unchanged (uint8 [B, H, W, 3] in, dynamic batch, height and width, the padded outputs),
saved as OUT/model.xml + OUT/model.bin with fp32 weights, and the ONNX metadata (model_config,
class_names, contract_version, producer) in the IR's rt_info under "boxinst", where
boxinst_serve.engines.openvino_engine reads it.

INT8 (`quantize_ir`): NNCF's post-training quantization of that IR, calibrated on the user's
images through the serving pre-processing (export/calibration.py), the convolutions of the same
float groups as the ONNX Runtime INT8 graph kept in float (export/quantize.py, DEFAULT_EXCLUDE),
saved beside it as OUT/model_int8.xml with a "quantization" entry. Whether it pays depends on the
CPU that runs it (docs/benchmarks.md): `int8_speedup` measures it on this one, and the export
says so when it does not."""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from boxinst_serve.engines.openvino_engine import METADATA_KEYS, require_openvino
from export.onnx import DEFAULT_OPSET, export_onnx, read_metadata

log = logging.getLogger(__name__)
# NNCF quantizes the inputs of many op types; here, as in ONNX Runtime's INT8 (export/quantize.py,
# QUANTIZED_OP_TYPES), only convolutions: every other type it would quantize stays float. Measured
# on tests/test_quantize.py's model (30 detections): with everything quantized 3 masks were
# misplaced (mask IoU 0), with the dynamic mask heads' MatMuls, the score products and the
# per-instance gathers kept float still 1.
FLOAT_OP_TYPES = ("MatMul", "Multiply", "GatherElements", "Add", "Subtract", "Divide", "Concat", "Interpolate",
                  "MaxPool", "Pad")


def convert_onnx(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, filename: str = "model.xml") -> Path:
    """OUT_DIR/model.xml (+ model.bin) from an exported model.onnx; returns the .xml path.

    Written atomically: the IR is saved in a temporary folder inside OUT_DIR, then model.bin and
    model.xml are renamed into place, the .xml last (what loads it). Weights stay fp32: OpenVINO's
    default fp16 compression of saved weights is turned off, so the IR computes what the ONNX
    graph computes."""
    ov = require_openvino()
    meta = read_metadata(onnx_path)
    if "model_config" not in meta:
        raise ValueError(f"'{onnx_path}' has no boxinst model_config in its metadata: export it with `boxinst export`")
    model = ov.convert_model(str(onnx_path))
    _set_metadata(model, meta)
    return _save(model, Path(out_dir), filename)


def _set_metadata(model, meta: dict[str, str]) -> None:
    for key in METADATA_KEYS:
        if key in meta:
            model.set_rt_info(meta[key], ["boxinst", key])


def _save(model, out_dir: Path, filename: str) -> Path:
    """Save atomically (see convert_onnx); returns the .xml path."""
    ov = require_openvino()
    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / filename
    with tempfile.TemporaryDirectory(prefix=".openvino-", dir=out_dir) as tmp:
        tmp_xml = Path(tmp) / filename
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_xml.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp_xml, xml)
    log.info("wrote %s (+ %s)", xml, xml.with_suffix(".bin").name)
    return xml


def quantize_ir(onnx_path: str | os.PathLike, options, out_dir: str | os.PathLike,
                filename: str = "model_int8.xml") -> Path:
    """OUT_DIR/model_int8.xml: NNCF post-training quantization of the exported graph `onnx_path`,
    calibrated on `options` (export.quantize.Int8Options: the COCO json's images, how many, the
    float groups; its ONNX Runtime-only fields, method and reduce_range, do not apply: NNCF
    calibrates with its own min-max statistics and OpenVINO picks the int8 kernels of the CPU).
    Returns the .xml path."""
    import nncf
    import onnx

    from boxinst_serve.config import ModelConfig
    from export.calibration import CalibrationImages
    from export.quantize import excluded_nodes

    ov = require_openvino()
    if not options.calibration:
        raise ValueError("INT8 needs calibration images: give --calibration DATA.json (a COCO json with images)")
    meta = read_metadata(onnx_path)
    if "model_config" not in meta:
        raise ValueError(f"'{onnx_path}' has no boxinst model_config in its metadata: export it with `boxinst export`")
    images = CalibrationImages.from_coco(options.calibration, ModelConfig.from_json(meta["model_config"]),
                                         options.num_images, options.images_dir)
    batches = list(images)
    # The float groups name ONNX Conv nodes; OpenVINO keeps an ONNX node's name as its op's name.
    floats = excluded_nodes(onnx.load(str(onnx_path), load_external_data=False), options.exclude)
    names = [n for nodes in floats.values() for n in nodes]
    t0 = time.perf_counter()
    quantized = nncf.quantize(ov.convert_model(str(onnx_path)), nncf.Dataset(batches), subset_size=len(batches),
                              ignored_scope=nncf.IgnoredScope(names=names, types=list(FLOAT_OP_TYPES),
                                                              validate=False))
    info = {"tool": f"nncf {nncf.__version__}", "calibration": {"data": Path(options.calibration).name,
                                                                **images.describe()},
            "float": list(options.exclude), "seconds": round(time.perf_counter() - t0, 1)}
    _set_metadata(quantized, meta)
    quantized.set_rt_info(json.dumps(info), ["boxinst", "quantization"])
    return _save(quantized, Path(out_dir), filename)


def int8_speedup(fp32_xml: str | os.PathLike, int8_xml: str | os.PathLike, image: np.ndarray, runs: int = 10,
                 threads: int = 0) -> tuple[float, float]:
    """(fp32 p50 ms, int8 p50 ms) of the two IRs on `image` (uint8 [1, H, W, 3]), on this CPU,
    interleaved run by run so that both see the same machine load; each compiled as the engine
    compiles it (fp32 inference precision)."""
    from boxinst_serve.engines.openvino_engine import OpenVINOEngine

    engines = [OpenVINOEngine(fp32_xml, threads=threads), OpenVINOEngine(int8_xml, threads=threads)]
    times: list[list[float]] = [[], []]
    for e in engines:
        e(image)  # first-call set-up
    for _ in range(runs):
        for e, t in zip(engines, times):
            t0 = time.perf_counter()
            e(image)
            t.append(time.perf_counter() - t0)
    fp32, int8 = (float(np.median(t)) * 1000 for t in times)
    return fp32, int8


def export_openvino(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                    onnx_path: str | os.PathLike | None = None, max_detections: int | None = None,
                    opset: int | None = None) -> Path:
    """A checkpoint to OUT_DIR/model.xml + model.bin via OUT_DIR/model.onnx (exported here unless
    `onnx_path` names an existing graph); returns the .xml path."""
    if onnx_path is None:
        onnx_path = export_onnx(checkpoint, out_dir, max_detections=max_detections, opset=opset or DEFAULT_OPSET)
    return convert_onnx(onnx_path, out_dir)

