"""What INT8 costs in accuracy: fp32 vs INT8 ONNX Runtime (and OpenVINO) engines of one checkpoint.

For each INT8 variant (calibration method x convolution groups kept in float) the table gives
pycocotools box and mask AP on a COCO json with masks (e.g. the shapes validation set), next to
the fp32 graph's, and the detection-level agreement with fp32 on the same held-out images
(calibration reads other images: the training json): detections matched one to one by class and
box IoU, their box and mask IoU, score differences. Optionally the network latency of each engine
at a given input size (same run), so that what stays float is chosen on accuracy and speed.

    python -m training.int8_accuracy --checkpoint RUN/final.pt --data shapes/val.json \\
        --calibration shapes/train.json [--variants minmax:head_outputs+mask_branch_out,entropy:none] \\
        [--time-size 384x512] [--json OUT.json]

A variant `nncf[:GROUPS]` is OpenVINO's INT8 (NNCF, export/openvino.py quantize_ir, convolutions
only); with one, the table also has the fp32 graph on OpenVINO, its reference.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from boxinst_serve.coco import box_ious, mask_iou
from boxinst_serve.predictor import Predictor
from boxinst_serve.preprocess import prepare_batch, read_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One INT8 recipe: calibration method, the convolution groups kept in float, the op types
    quantized."""

    method: str
    exclude: tuple[str, ...]
    op_types: tuple[str, ...] = ("Conv",)

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """METHOD[:GROUPS[:OPS]]: 'minmax:head_outputs+mask_branch_out', 'entropy:none',
        'percentile' (default groups), 'minmax:default:Conv+MatMul' (dynamic heads quantized too)."""
        from export.quantize import CALIBRATION_METHODS, DEFAULT_EXCLUDE, QUANTIZED_OP_TYPES

        method, _, rest = text.partition(":")
        groups, _, ops = rest.partition(":")
        if method not in (*CALIBRATION_METHODS, NNCF):
            raise ValueError(f"variant {text!r}: method must be one of {CALIBRATION_METHODS}")
        exclude = tuple(DEFAULT_EXCLUDE) if groups in ("", "default") else \
            () if groups == "none" else tuple(g for g in groups.split("+") if g)
        return cls(method, exclude, tuple(o for o in ops.split("+") if o) or tuple(QUANTIZED_OP_TYPES))

    @property
    def name(self) -> str:
        ops = "" if self.op_types == ("Conv",) else ":" + "+".join(self.op_types)
        return f"{self.method}:{'+'.join(self.exclude) or 'none'}{ops}"


NNCF = "nncf"  # the variant method of OpenVINO's INT8


def engine_predictions(engine, gt: COCO, images_dir: Path) -> list[dict[str, Any]]:
    """COCO results of an engine on every image of gt (pre- and post-processing as in serving)."""
    predictor = Predictor(engine)
    category_ids = sorted(gt.getCatIds())
    results: list[dict[str, Any]] = []
    for image_id in sorted(gt.getImgIds()):
        inst = predictor(read_image(images_dir / gt.imgs[image_id]["file_name"]))
        results.extend(inst.to_coco(image_id, category_ids))
    return results


def agreement(reference: list[dict[str, Any]], other: list[dict[str, Any]], score_thresh: float = 0.3,
              match_iou: float = 0.5) -> dict[str, float]:
    """Detection-level agreement of `other` with `reference` (COCO results of the same images):
    detections with score >= score_thresh of each image are matched one to one, reference in
    score order, to the unused detection of the same class with the highest box IoU (>= match_iou).
    Returns counts, the matched fractions of each side, mean box IoU, mean and 5th-percentile
    mask IoU, and mean absolute score difference of the matched pairs."""
    def by_image(results):
        out: dict[int, list[dict]] = {}
        for r in results:
            if r["score"] >= score_thresh:
                out.setdefault(r["image_id"], []).append(r)
        return out

    ref, oth = by_image(reference), by_image(other)
    box_iou_list, mask_iou_list, score_diff = [], [], []
    n_ref = sum(len(v) for v in ref.values())
    n_oth = sum(len(v) for v in oth.values())
    for image_id, dets in ref.items():
        cands = oth.get(image_id, [])
        if not cands:
            continue
        dets = sorted(dets, key=lambda r: -r["score"])
        ious = box_ious([d["bbox"] for d in dets], [c["bbox"] for c in cands])
        used: set[int] = set()
        for i, d in enumerate(dets):
            ok = [j for j in range(len(cands)) if j not in used and cands[j]["category_id"] == d["category_id"]
                  and ious[i, j] >= match_iou]
            if not ok:
                continue
            j = max(ok, key=lambda j: ious[i, j])
            used.add(j)
            box_iou_list.append(float(ious[i, j]))
            mask_iou_list.append(mask_iou(d["segmentation"], cands[j]["segmentation"]))
            score_diff.append(abs(d["score"] - cands[j]["score"]))
    matched = len(box_iou_list)
    return {"reference_detections": n_ref, "other_detections": n_oth, "matched": matched,
            "reference_matched_fraction": matched / n_ref if n_ref else 1.0,
            "other_matched_fraction": matched / n_oth if n_oth else 1.0,
            "mean_box_iou": float(np.mean(box_iou_list)) if matched else 0.0,
            "mean_mask_iou": float(np.mean(mask_iou_list)) if matched else 0.0,
            "p5_mask_iou": float(np.percentile(mask_iou_list, 5)) if matched else 0.0,
            "mean_abs_score_diff": float(np.mean(score_diff)) if matched else 0.0}


def network_ms(engine, image: np.ndarray, size: tuple[int, int], iters: int = 10, warmup: int = 2) -> float:
    """p50 ms of engine(images) on `image` resized and padded to test size `size` (short x max side)."""
    batch, _ = prepare_batch([image], min(size), max(size), engine.config.size_divisibility)
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        engine(batch)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def compare(checkpoint: str, data_json: str, calibration_json: str, variants: list[Variant],
            num_images: int = 64, images_dir: str | None = None, calibration_dir: str | None = None,
            score_thresh: float = 0.3, time_size: tuple[int, int] | None = None, time_iters: int = 10,
            work_dir: str | None = None) -> dict[str, Any]:
    """Export the checkpoint, quantize it once per variant, evaluate fp32 and every INT8 graph.
    Returns {"fp32": row, "int8": [rows], ...}; a row has bbox/segm AP figures, agreement (INT8
    rows) and network_ms (with time_size)."""
    from boxinst_serve.engines import load_engine
    from export.onnx import export_onnx
    from export.quantize import Int8Options, quantize_exported, quantization_info
    from training.evaluate import coco_metrics

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(data_json)
    images = Path(images_dir) if images_dir else Path(data_json).parent / "images"
    first_image = read_image(images / gt.imgs[sorted(gt.getImgIds())[0]]["file_name"])
    with tempfile.TemporaryDirectory(prefix="boxinst-int8-eval-", dir=work_dir) as tmp:
        fp32_path = export_onnx(checkpoint, Path(tmp))

        def row(path: Path, name: str) -> tuple[dict[str, Any], list]:
            engine = load_engine(path)
            t0 = time.perf_counter()
            results = engine_predictions(engine, gt, images)
            log.info("%s: %d images in %.1f s", name, len(gt.getImgIds()), time.perf_counter() - t0)
            r = {"engine": name, "bbox": coco_metrics(gt, results, "bbox"), "segm": coco_metrics(gt, results, "segm")}
            if time_size:
                r["network_ms"] = network_ms(engine, first_image, time_size, iters=time_iters)
            return r, results

        fp32_row, fp32_results = row(fp32_path, "fp32")
        rows = []
        if any(v.method == NNCF for v in variants):
            from export.openvino import convert_onnx

            r, results = row(convert_onnx(fp32_path, Path(tmp)), "fp32 openvino")
            r["agreement"] = agreement(fp32_results, results, score_thresh)
            rows.append(r)
        for v in variants:
            if v.method == NNCF:
                from export.openvino import quantize_ir

                q = quantize_ir(fp32_path, Int8Options(calibration_json, num_images, exclude=v.exclude,
                                                       images_dir=calibration_dir), Path(tmp), f"nncf_{len(rows)}.xml")
                r, results = row(q, f"int8 openvino {v.name}")
                r["variant"] = v.name
                r["agreement"] = agreement(fp32_results, results, score_thresh)
                rows.append(r)
                continue
            q = quantize_exported(fp32_path, Int8Options(calibration_json, num_images, v.method, v.exclude,
                                                         calibration_dir, op_types=v.op_types),
                                  Path(tmp) / "model_int8.onnx",
                                  ranges_cache=Path(tmp) / f"ranges_{v.method}_{'+'.join(v.op_types)}.json")
            r, results = row(q, f"int8 {v.name}")
            r["variant"] = v.name
            r["quantization"] = quantization_info(q)
            r["agreement"] = agreement(fp32_results, results, score_thresh)
            rows.append(r)
    return {"checkpoint": str(checkpoint), "data": str(data_json), "calibration": str(calibration_json),
            "calibration_images": num_images, "num_images": len(gt.getImgIds()), "agreement_score_thresh": score_thresh,
            "time_size": list(time_size) if time_size else None, "fp32": fp32_row, "int8": rows}


def format_comparison(report: dict[str, Any]) -> str:
    """Markdown table: one row for fp32, one per INT8 variant."""
    timed = report.get("time_size") is not None
    head = "| engine | box AP | box AP50 | mask AP | mask AP50 | mask AP - fp32 | fp32 dets found | int8 dets in fp32 " \
           "| box IoU | mask IoU (mean / p5) | score diff |"
    sep = "|---|---|---|---|---|---|---|---|---|---|---|"
    if timed:
        h, w = report["time_size"]
        head += f" network ms {h}x{w} |"
        sep += "---|"
    lines = [head, sep]
    base = report["fp32"]["segm"]["AP"]
    for r in [report["fp32"], *report["int8"]]:
        a = r.get("agreement")
        cells = [r["engine"], f"{r['bbox']['AP']:.1f}", f"{r['bbox']['AP50']:.1f}", f"{r['segm']['AP']:.1f}",
                 f"{r['segm']['AP50']:.1f}", "-" if a is None else f"{r['segm']['AP'] - base:+.2f}"]
        if a is None:
            cells += ["-"] * 5
        else:
            cells += [f"{a['matched']}/{a['reference_detections']}", f"{a['matched']}/{a['other_detections']}",
                      f"{a['mean_box_iou']:.3f}", f"{a['mean_mask_iou']:.3f} / {a['p5_mask_iou']:.3f}",
                      f"{a['mean_abs_score_diff']:.4f}"]
        if timed:
            cells.append(f"{r['network_ms']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"{report['num_images']} images of {report['data']}; calibration: {report['calibration_images']} "
                 f"images of {report['calibration']}; agreement at score >= {report['agreement_score_thresh']}, "
                 "matched by class and box IoU >= 0.5")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from boxinst_serve.config import parse_size as _size

    p = argparse.ArgumentParser(prog="python -m training.int8_accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="COCO json with masks to evaluate on (held out from calibration)")
    p.add_argument("--images", default=None, help="image folder of --data (default: images/ beside it)")
    p.add_argument("--calibration", required=True, help="COCO json whose images calibrate (e.g. train.json)")
    p.add_argument("--calibration-image-dir", default=None)
    p.add_argument("--calibration-images", type=int, default=64)
    p.add_argument("--variants", default="percentile",
                   help="comma-separated METHOD[:GROUP+GROUP|:none|:default[:OP+OP]], e.g. minmax,entropy:none,"
                        "minmax:default:Conv+MatMul")
    p.add_argument("--score-thresh", type=float, default=0.3, help="agreement: detections compared")
    p.add_argument("--time-size", type=_size, default=None, help="also time each engine's network at HxW")
    p.add_argument("--time-iters", type=int, default=10)
    p.add_argument("--json", default=None, help="write the report here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    variants = [Variant.parse(v) for v in args.variants.split(",") if v]
    report = compare(args.checkpoint, args.data, args.calibration, variants, args.calibration_images, args.images,
                     args.calibration_image_dir, args.score_thresh, args.time_size, args.time_iters)
    print(format_comparison(report))
    if args.json:
        from boxinst_serve.files import write_json_atomic

        write_json_atomic(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
