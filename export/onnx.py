"""ONNX export of the whole CondInst inference graph (docs/architecture.md, "Network contract").

uint8 pixels [B, H, W, 3] in; normalisation, backbone, FPN, FCOS head, decoding, per-level top-k,
class-aware NMS (ONNX NonMaxSuppression), dynamic mask heads (batched MatMul), aligned-bilinear
upsampling to stride 4 and the uint8 cast all in the graph; outputs padded to max_detections.
Dynamic batch, height and width (multiples of 32).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import onnx
import torch
from google.protobuf.message import DecodeError
from onnxscript import opset18 as op

from boxinst_serve.checkpoint import load_model
from boxinst_serve.config import CONTRACT_VERSION, INPUT_NAME, OUTPUT_NAMES, padded_size
from boxinst_serve.model.detect import InferenceModel

log = logging.getLogger(__name__)
DEFAULT_OPSET = 18


def _nms_onnx(boxes, scores, iou_threshold: float, max_per_image: int):
    """boxinst::batched_nms as ONNX NonMaxSuppression: boxes [B, M, 4], scores [B, M] ->
    selected [S, 2] (image index, candidate index). Corner format; IoU is symmetric in x/y."""
    selected = op.NonMaxSuppression(
        boxes,
        op.Unsqueeze(scores, op.Constant(value_ints=[1])),
        op.Constant(value_ints=[max_per_image]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[0.0]),
    )
    return op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)


def export_onnx(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, max_detections: int | None = None,
                opset: int = DEFAULT_OPSET, max_side: int = 2048, filename: str = "model.onnx") -> Path:
    """Export a checkpoint to OUT_DIR/model.onnx and return its path (written atomically)."""
    model = load_model(checkpoint, "cpu")
    if max_detections is not None:
        model.cfg = model.cfg.replace(max_detections=max_detections)
    cfg = model.cfg
    net = InferenceModel(model).eval()
    # Example input: torch.export specialises any dimension that is 1 (or equal to another) in the
    # example, so batch 2 and a non-square size with every level, P7 included, at least 2 wide.
    coarsest = cfg.strides[-1]
    h = max(padded_size(cfg.min_size_test, cfg.size_divisibility), 2 * coarsest + cfg.size_divisibility)
    w = h + 2 * cfg.size_divisibility
    example = torch.zeros(2, h, w, 3, dtype=torch.uint8)
    div = cfg.size_divisibility
    batch = torch.export.Dim("batch", min=1, max=256)
    hd = torch.export.Dim("height_div", min=1, max=max_side // div)
    wd = torch.export.Dim("width_div", min=1, max=max_side // div)
    dynamic_shapes = {"images": {0: batch, 1: div * hd, 2: div * wd}}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    tmp = out_dir / (filename + ".tmp")
    with torch.no_grad():
        program = torch.onnx.export(
            net, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic_shapes, opset_version=opset, optimize=True, verbose=False,
            custom_translation_table={torch.ops.boxinst.batched_nms.default: _nms_onnx},
        )
    proto = program.model_proto
    meta = {"model_config": cfg.to_json(), "class_names": json.dumps(cfg.class_names),
            "contract_version": CONTRACT_VERSION, "producer": "boxinst-serve"}
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, tmp)
    os.replace(tmp, path)
    log.info("wrote %s (opset %d, max_detections %d)", path, opset, cfg.max_detections)
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """metadata_props of an ONNX file as a dict (ValueError naming the file if it is not ONNX)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError as exc:
        raise ValueError(f"'{path}' is not an ONNX model ({exc}); export it again with `boxinst export`") from exc
    return {p.key: p.value for p in model.metadata_props}


def op_types(path: str | os.PathLike) -> set[str]:
    """Every op type in the graph, subgraphs and functions included."""
    model = onnx.load(str(path), load_external_data=False)
    types: set[str] = set()

    def visit(graph) -> None:
        for node in graph.node:
            types.add(node.op_type)
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(model.graph)
    for fn in model.functions:
        for node in fn.node:
            types.add(node.op_type)
    return types
