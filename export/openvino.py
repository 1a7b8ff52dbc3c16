"""OpenVINO IR export: the exported ONNX graph converted as it is (ov.convert_model), the network
contract unchanged (uint8 [B, H, W, 3] in, dynamic batch, height and width, the padded outputs),
saved as OUT/model.xml + OUT/model.bin with fp32 weights, and the ONNX metadata (model_config,
class_names, contract_version, producer) in the IR's rt_info under "boxinst", where
boxinst_serve.engines.openvino_engine reads it."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from boxinst_serve.engines.openvino_engine import METADATA_KEYS, require_openvino
from export.onnx import DEFAULT_OPSET, export_onnx, read_metadata

log = logging.getLogger(__name__)


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
    for key in METADATA_KEYS:
        if key in meta:
            model.set_rt_info(meta[key], ["boxinst", key])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / filename
    with tempfile.TemporaryDirectory(prefix=".openvino-", dir=out_dir) as tmp:
        tmp_xml = Path(tmp) / filename
        ov.save_model(model, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_xml.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(tmp_xml, xml)
    log.info("wrote %s (+ %s)", xml, xml.with_suffix(".bin").name)
    return xml


def export_openvino(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                    onnx_path: str | os.PathLike | None = None, max_detections: int | None = None,
                    opset: int | None = None) -> Path:
    """A checkpoint to OUT_DIR/model.xml + model.bin via OUT_DIR/model.onnx (exported here unless
    `onnx_path` names an existing graph); returns the .xml path."""
    if onnx_path is None:
        onnx_path = export_onnx(checkpoint, out_dir, max_detections=max_detections, opset=opset or DEFAULT_OPSET)
    return convert_onnx(onnx_path, out_dir)

