"""INT8 copy of the exported graph: ONNX Runtime static quantization in QDQ format.

Convolutions run in int8: weights int8, symmetric, per output channel; activations uint8,
asymmetric, per tensor, with ranges calibrated on real images (export/calibration.py). What stays
float, by op type: everything that is not a convolution (GroupNorm, the decoding, top-k, NMS, the
dynamic mask heads' batched MatMuls, the aligned-bilinear upsampling); by choice, the groups of
`EXCLUDE_GROUPS` named in `exclude` (default `DEFAULT_EXCLUDE`, chosen by measurement: see
docs/results.md, "INT8"). The result is still a .onnx with the same inputs, outputs and metadata
(network contract) plus a `quantization` entry saying how it was made; ONNX Runtime's graph
optimiser fuses the QDQ pairs into integer kernels when the session loads it."""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from boxinst_serve.config import INPUT_NAME

log = logging.getLogger(__name__)

# Groups of convolutions that may be kept in float, each a regular expression over the name of
# the convolution's weight (the PyTorch parameter name the exporter keeps as initializer name).
EXCLUDE_GROUPS: dict[str, str] = {
    "first_conv": r"backbone\.body\.conv1\.weight$",  # the stem: sees raw normalised pixels
    "head_outputs": r"head\.(cls_logits|bbox_pred|centerness|controller)\.weight$",  # FCOS head predictors
    "mask_branch_out": r"mask_branch\.tower\.\d+\.weight$",  # filtered to the last tower conv below
}
DEFAULT_EXCLUDE: tuple[str, ...] = ("head_outputs", "mask_branch_out")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANTIZED_OP_TYPES = ("Conv",)
DEFAULT_METHOD = "percentile"


@dataclass(frozen=True)
class Int8Options:
    """How to make an INT8 engine: calibration COCO json (its images, read through the serving
    pre-processing), how many of them, the calibration method (ONNX Runtime; TensorRT always uses
    its entropy calibrator), the groups kept in float, and the TensorRT calibration cache file."""

    calibration: str | None
    num_images: int = 64
    method: str = DEFAULT_METHOD
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    images_dir: str | None = None
    cache: str | None = None
    op_types: tuple[str, ...] = QUANTIZED_OP_TYPES
    reduce_range: bool | None = None  # None: 7-bit weights when this CPU lacks VNNI (see cpu_has_vnni)


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (AVX-512 VNNI or AVX-VNNI), read from /proc/cpuinfo (False
    where that cannot be read). ONNX Runtime's uint8 x int8 convolutions can saturate their 16-bit
    intermediate sums on AVX2/AVX-512 CPUs without VNNI; its advice there is 7-bit weights
    (reduce_range). Not measured on a CPU without VNNI."""
    from boxinst_serve.measure import VNNI_FLAGS, cpu_model_and_flags, read_cpuinfo

    return bool(cpu_model_and_flags(read_cpuinfo())[1] & set(VNNI_FLAGS))


def conv_weights(model) -> dict[str, str]:
    """{node name: weight initializer name} of every Conv node of an onnx ModelProto's main graph."""
    inits = {i.name for i in model.graph.initializer}
    return {n.name: n.input[1] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in inits}


def excluded_nodes(model, groups: Sequence[str]) -> dict[str, list[str]]:
    """{group: [node names]} of the Conv nodes each group of EXCLUDE_GROUPS keeps in float.
    Raises ValueError for an unknown group, or one that matches no convolution of this graph."""
    weights = conv_weights(model)
    out: dict[str, list[str]] = {}
    for g in groups:
        if g not in EXCLUDE_GROUPS:
            raise ValueError(f"unknown INT8 exclusion group {g!r}: choose from {sorted(EXCLUDE_GROUPS)}")
        pattern = re.compile(EXCLUDE_GROUPS[g])
        nodes = [n for n, w in weights.items() if pattern.search(w)]
        if g == "mask_branch_out" and nodes:  # only the branch's output convolution (highest tower index)
            last = max(int(re.search(r"tower\.(\d+)\.", weights[n]).group(1)) for n in nodes)
            nodes = [n for n in nodes if f"tower.{last}." in weights[n]]
        if not nodes:
            raise ValueError(f"INT8 exclusion group {g!r} matches no convolution of this graph")
        out[g] = nodes
    return out


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over uint8 network inputs [B, H, W, 3]."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self._it = iter(batches)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        self.count += batch.shape[0]
        return {INPUT_NAME: np.ascontiguousarray(batch)}

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


CALIBRATION_CHUNK = 8  # batches per calibrator pass: histogram methods hold a pass's tensors in memory
# Calibrator settings per method (ONNX Runtime's create_calibrator options). Activations are
# uint8 asymmetric, so every range is asymmetric; entropy uses TensorRT's 2048-bin histograms
# (quantize_static would give it 128 bins, the same number as its quantized bins, which makes it
# return the min-max range).
CALIBRATOR_OPTIONS = {
    "minmax": {"symmetric": False},
    "entropy": {"symmetric": False, "num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"symmetric": False, "num_bins": 2048, "percentile": 99.999},
}


def calibrate_ranges(onnx_path: Path, batches: Iterable[np.ndarray], method: str, op_types: Sequence[str],
                     ranges_path: Path, work_dir: Path) -> int:
    """Run the fp32 graph on the calibration batches and save the activation ranges of every
    tensor that `op_types` nodes read or write (ONNX Runtime's calibration cache JSON) to
    RANGES_PATH. Returns the number of images seen."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    calibrator = create_calibrator(onnx_path, list(op_types), augmented_model_path=str(work_dir / "augmented.onnx"),
                                   calibrate_method={"minmax": CalibrationMethod.MinMax,
                                                     "entropy": CalibrationMethod.Entropy,
                                                     "percentile": CalibrationMethod.Percentile}[method],
                                   extra_options=CALIBRATOR_OPTIONS[method])
    seen = 0
    it = iter(batches)
    while True:
        chunk = [b for _, b in zip(range(CALIBRATION_CHUNK), it)]
        if not chunk:
            break
        reader = _Reader(chunk)
        calibrator.collect_data(reader)
        seen += reader.count
    if seen == 0:
        raise ValueError("INT8 calibration got no images")
    save_tensors_data(calibrator.compute_data(), ranges_path)
    return seen


def quantize_onnx(onnx_path: str | os.PathLike, batches: Iterable[np.ndarray], out_path: str | os.PathLike,
                  method: str = DEFAULT_METHOD, exclude: Sequence[str] = DEFAULT_EXCLUDE, reduce_range: bool = False,
                  calibration_info: dict | None = None, op_types: Sequence[str] = QUANTIZED_OP_TYPES,
                  ranges_cache: str | os.PathLike | None = None) -> Path:
    """Write the INT8 (QDQ) copy of ONNX_PATH to OUT_PATH (atomically) and return its path.

    batches: calibration inputs, uint8 [B, H, W, 3] each (e.g. export.calibration.CalibrationImages);
    method: minmax | entropy (KL divergence, 2048 bins) | percentile (99.999th); exclude: groups
    of EXCLUDE_GROUPS kept float; reduce_range: 7-bit weights, ONNX Runtime's advice for x86 CPUs
    without VNNI (AVX2 only); calibration_info: what the batches were, recorded in the metadata;
    op_types: the op types quantized (default convolutions only; "MatMul" adds the dynamic mask
    heads' batched products); ranges_cache: a JSON file of calibrated ranges, read when it exists
    (the batches are then not read), written otherwise (valid for the same graph, method and op types)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    model = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in model.metadata_props}
    if "model_config" not in meta:
        raise ValueError(f"'{onnx_path}' has no boxinst model_config in its metadata: export it with `boxinst export`")
    if "quantization" in meta:
        raise ValueError(f"'{onnx_path}' is already quantized ({meta['quantization'][:80]}...): quantize the fp32 export")
    skipped = excluded_nodes(model, exclude)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="boxinst-int8-", dir=out_path.parent) as tmp:
        ranges = Path(ranges_cache) if ranges_cache else Path(tmp) / "ranges.json"
        if ranges.is_file():
            seen = json.loads(ranges.with_suffix(".images").read_text()) if ranges.with_suffix(".images").is_file() \
                else None
        else:
            seen = calibrate_ranges(onnx_path, batches, method, op_types, ranges, Path(tmp))
            ranges.with_suffix(".images").write_text(json.dumps(seen))
        quantized = Path(tmp) / "model_int8.onnx"
        quantize_static(str(onnx_path), str(quantized), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(op_types), per_channel=True, reduce_range=reduce_range,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=[n for nodes in skipped.values() for n in nodes],
                        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                          "percentile": CalibrationMethod.Percentile}[method],
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                        calibration_cache_path=str(ranges))
        q = onnx.load(str(quantized))
        weights = conv_weights(model)
        floated = {x for v in skipped.values() for x in v}
        info = {
            "format": "QDQ (ONNX Runtime static quantization)",
            "quantized_op_types": list(op_types),
            "weights": "int8, symmetric, per output channel" + (", 7-bit range (reduce_range)" if reduce_range else ""),
            "activations": "uint8, asymmetric, per tensor",
            "calibration": {"method": method, **CALIBRATOR_OPTIONS[method], **(calibration_info or {}),
                            "images_seen": seen},
            "excluded": {g: sorted({weights[n] for n in nodes}) for g, nodes in skipped.items()},
            "float_by_op_type": "every op not in quantized_op_types: normalisation, GroupNorm, decoding, TopK, NMS, "
                                "upsampling" + ("" if "MatMul" in op_types else ", dynamic mask heads (MatMul)"),
            "quantized_convs": sum(1 for n in weights if n not in floated),
            "float_convs": len(floated),
        }
        del q.metadata_props[:]
        for k, v in {**meta, "quantization": json.dumps(info)}.items():
            q.metadata_props.add(key=k, value=v)
        onnx.checker.check_model(q)
        tmp_out = out_path.with_name(out_path.name + ".tmp")
        onnx.save(q, str(tmp_out))
        os.replace(tmp_out, out_path)
    log.info("wrote %s (INT8 QDQ, %s calibration on %s images, float: %s)", out_path, method, seen,
             ", ".join(exclude) or "none")
    return out_path


def quantization_info(path: str | os.PathLike) -> dict | None:
    """The `quantization` metadata of an ONNX file (None for a float graph)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for p in model.metadata_props:
        if p.key == "quantization":
            return json.loads(p.value)
    return None


def quantize_exported(onnx_path: str | os.PathLike, options: Int8Options, out_path: str | os.PathLike,
                      ranges_cache: str | os.PathLike | None = None) -> Path:
    """INT8 copy of an exported graph calibrated on the images of options.calibration, pre-processed
    with the model config stored in the graph (its test sizes). ranges_cache: see quantize_onnx."""
    from boxinst_serve.config import ModelConfig
    from export.calibration import CalibrationImages
    from export.onnx import read_metadata

    if not options.calibration:
        raise ValueError("INT8 needs calibration images: give --calibration DATA.json (a COCO json with images)")
    meta = read_metadata(onnx_path)
    if "model_config" not in meta:
        raise ValueError(f"'{onnx_path}' has no boxinst model_config in its metadata: export it with `boxinst export`")
    cfg = ModelConfig.from_json(meta["model_config"])
    images = CalibrationImages.from_coco(options.calibration, cfg, options.num_images, options.images_dir)
    info = {"data": Path(options.calibration).name, **images.describe()}
    reduce_range = not cpu_has_vnni() if options.reduce_range is None else options.reduce_range
    return quantize_onnx(onnx_path, images, out_path, method=options.method, exclude=options.exclude,
                         reduce_range=reduce_range, calibration_info=info, op_types=options.op_types,
                         ranges_cache=ranges_cache)
