"""COCO evaluation (pycocotools bbox and segm AP) of a checkpoint on a COCO json."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from boxinst_serve.checkpoint import load_checkpoint
from boxinst_serve.coco import mask_iou, match_to_detections
from boxinst_serve.files import write_json_atomic
from boxinst_serve.engines.torch_engine import TorchEngine
from boxinst_serve.model import build_model
from boxinst_serve.predictor import Predictor
from boxinst_serve.preprocess import read_image
from boxinst_serve.results import encode_masks
from training.heal import describe as describe_heals

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# What "the masks beat the filled boxes" means (the point of BoxInst: box supervision gave masks
# better than the boxes they were learned from): mask AP at least this many points above the
# filled-box AP of the same detections, and at least this many times it. Read by `boxinst eval`'s
# verdict, `make demo`, the seed study and the slow test.
BEAT_MARGIN_POINTS = 2.0
BEAT_MARGIN_RATIO = 1.5


def _accumulated(gt: COCO, predictions: list[dict[str, Any]], iou_type: str, use_cats: bool = True) -> COCOeval:
    """COCOeval of non-empty predictions against gt, evaluated and accumulated (its printing muted)."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(predictions), iou_type)
        ev.params.useCats = int(use_cats)
        ev.evaluate()
        ev.accumulate()
    return ev


def coco_metrics(gt: COCO, predictions: list[dict[str, Any]], iou_type: str,
                 class_agnostic: bool = False) -> dict[str, float]:
    """AP figures (in percent) of predictions against gt; all zero when there are no predictions.
    class_agnostic: match detections to objects of any category (COCOeval useCats=0), which
    isolates mask quality from classification errors."""
    if not predictions:
        return {k: 0.0 for k in METRIC_NAMES}
    ev = _accumulated(gt, predictions, iou_type, use_cats=not class_agnostic)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.summarize()
    return {k: float(max(v, 0.0) * 100) for k, v in zip(METRIC_NAMES, ev.stats[:6])}


def per_category_ap(gt: COCO, predictions: list[dict[str, Any]], iou_type: str = "segm") -> dict[str, float]:
    """AP (0.5:0.95, all areas, 100 detections; percent) of each category, by name; -1 for a
    category without ground truth (COCOeval's precision array, as summarize() averages it)."""
    names = {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())}
    if not predictions:
        return {n: 0.0 for n in names.values()}
    ev = _accumulated(gt, predictions, iou_type)
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K] at area "all", maxDets 100
    out = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        out[names[cat]] = float(p[p > -1].mean() * 100) if (p > -1).any() else -1.0
    return out


@torch.no_grad()
def predict_dataset(model, data_json: str, images_dir: str | None = None, batch_size: int = 1,
                    progress: bool = True, device: str = "cpu") -> tuple[COCO, list[dict[str, Any]]]:
    """Run the model on every image of a COCO json; returns (gt COCO, COCO results list)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(data_json)
    images_dir = Path(images_dir) if images_dir else Path(data_json).parent / "images"
    category_ids = sorted(gt.getCatIds())
    predictor = Predictor(TorchEngine.from_model(model, device))
    image_ids = sorted(gt.getImgIds())
    results: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(image_ids), batch_size), desc="eval", disable=not progress):
        ids = image_ids[start:start + batch_size]
        images = [read_image(images_dir / gt.imgs[i]["file_name"]) for i in ids]
        for image_id, inst in zip(ids, predictor.predict_batch(images)):
            results.extend(inst.to_coco(image_id, category_ids))
    return gt, results


def evaluate(checkpoint: str, data_json: str, images_dir: str | None = None, json_out: str | None = None,
             device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Evaluate a checkpoint: {"bbox": {...}, "segm": {...}} in percent, the verdict, and "heals":
    the training run's heals (training/heal.py, from the checkpoint; [] when none); optionally
    written to json_out (atomically) together with the predictions."""
    ckpt = load_checkpoint(checkpoint, map_location=device)
    model = build_model(ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    model = model.to(device).eval()
    gt, results = predict_dataset(model, data_json, images_dir, progress=progress, device=device)
    boxed = with_box_masks(results, gt)
    report = {"checkpoint": str(checkpoint), "data": str(data_json), "num_images": len(gt.getImgIds()),
              "bbox": coco_metrics(gt, results, "bbox"), "segm": coco_metrics(gt, results, "segm"),
              "segm_class_agnostic": coco_metrics(gt, results, "segm", class_agnostic=True),
              "segm_filled_boxes": coco_metrics(gt, boxed, "segm"),
              "segm_filled_boxes_class_agnostic": coco_metrics(gt, boxed, "segm", class_agnostic=True)}
    report["verdict"] = verdict(report["segm"]["AP"], report["segm_filled_boxes"]["AP"])
    report["heals"] = list(ckpt.get("heals", []))
    if json_out:
        write_json_atomic(json_out, {**report, "predictions": results})
    return report


def beats_filled_boxes(masks_ap: float, boxes_ap: float) -> bool:
    """Whether mask AP beats the filled-box AP of the same detections by the project's margin
    (BEAT_MARGIN_POINTS and BEAT_MARGIN_RATIO, both required)."""
    return masks_ap >= boxes_ap + BEAT_MARGIN_POINTS and masks_ap >= BEAT_MARGIN_RATIO * boxes_ap


def verdict(masks_ap: float, boxes_ap: float) -> dict[str, Any]:
    """{"masks_beat_boxes": bool, "line": one line saying so with both figures}."""
    ok = beats_filled_boxes(masks_ap, boxes_ap)
    word = "PASS" if ok else "FAIL"
    how = "beat" if ok else "do NOT beat"
    line = (f"verdict: {word}: the masks (mask AP {masks_ap:.1f}) {how} the filled boxes of the same detections "
            f"(mask AP {boxes_ap:.1f}) by the margin (+{BEAT_MARGIN_POINTS:g} points and x{BEAT_MARGIN_RATIO:g})")
    return {"masks_beat_boxes": ok, "line": line}


def with_box_masks(results: list[dict[str, Any]], gt: COCO) -> list[dict[str, Any]]:
    """The same detections with each mask replaced by its filled box: the naive baseline that box
    supervision has to beat (the paper's "filled box" row, without retraining)."""
    out = []
    for r in results:
        img = gt.imgs[r["image_id"]]
        x, y, w, h = r["bbox"]
        m = np.zeros((img["height"], img["width"]), dtype=np.uint8)
        m[int(round(y)):int(round(y + h)), int(round(x)):int(round(x + w))] = 1
        out.append({**r, "segmentation": encode_masks(m[None])[0]})
    return out


def _matched_pairs(gt: COCO, results: list[dict[str, Any]], score_thresh: float, match_iou: float):
    """Yield (GT annotation, detection) for each GT object whose detection (score > score_thresh)
    with the highest box IoU reaches match_iou."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        if r["score"] > score_thresh:
            by_image.setdefault(r["image_id"], []).append(r)
    for img_id in gt.getImgIds():
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[img_id], iscrowd=False))
        dets = by_image.get(img_id, [])
        if not dets:
            continue
        for a, j in zip(anns, match_to_detections([a["bbox"] for a in anns], [d["bbox"] for d in dets], match_iou)):
            if j is not None:
                yield a, dets[j]


def matched_mask_iou(gt: COCO, results: list[dict[str, Any]], score_thresh: float = 0.1,
                     match_iou: float = 0.5) -> dict[str, float]:
    """Mask quality apart from detection: for each GT object, the detection (score > score_thresh)
    with the highest box IoU, if >= match_iou; mean mask IoU of those pairs, and of their filled
    boxes for comparison. Returns {"matched", "objects", "mask_iou", "filled_box_iou"}."""
    boxed = {id(r): b for r, b in zip(results, with_box_masks(results, gt))}
    ious, box_ious = [], []
    for a, det in _matched_pairs(gt, results, score_thresh, match_iou):
        g = gt.annToRLE(a)
        ious.append(mask_iou(det["segmentation"], g))
        box_ious.append(mask_iou(boxed[id(det)]["segmentation"], g))
    return {"matched": len(ious), "objects": len(gt.getAnnIds(iscrowd=False)),
            "mask_iou": float(np.mean(ious)) if ious else 0.0,
            "filled_box_iou": float(np.mean(box_ious)) if box_ious else 0.0}


def enclosed_holes(mask: np.ndarray) -> np.ndarray:
    """Holes of a mask: bool [H, W], the pixels outside `mask` (bool [H, W]) that no 4-connected path
    of outside pixels links to the image border (a ring's middle; a crescent's bite is not one)."""
    outside = (~mask.astype(bool)).astype(np.uint8)
    _, labels = cv2.connectedComponents(outside, connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return (outside > 0) & ~np.isin(labels, border)


def hole_fill_fraction(gt: COCO, results: list[dict[str, Any]], score_thresh: float = 0.1,
                       match_iou: float = 0.5) -> dict[str, float]:
    """How much of the GT objects' enclosed holes their matched detections (as in matched_mask_iou)
    mark as object: the case the box-only losses give no signal for (the projections of a ring
    are those of a disc, and no chain of similar colours links the hole to the outside of the
    box). Returns {"objects": GT objects with a hole, "matched": those matched, "filled": mean
    over matched objects of the filled fraction of the hole pixels (0: hole left empty, 1: filled)}."""
    filled = []
    holes_of: dict[int, np.ndarray] = {}
    for a in gt.loadAnns(gt.getAnnIds(iscrowd=False)):
        holes = enclosed_holes(gt.annToMask(a))
        if holes.any():
            holes_of[a["id"]] = holes
    for a, det in _matched_pairs(gt, results, score_thresh, match_iou):
        holes = holes_of.get(a["id"])
        if holes is None:
            continue
        pred = mask_utils.decode(det["segmentation"]).astype(bool)  # str or bytes counts
        filled.append(float((pred & holes).sum()) / float(holes.sum()))
    return {"objects": len(holes_of), "matched": len(filled), "filled": float(np.mean(filled)) if filled else 0.0}


def format_table(report: dict[str, Any]) -> str:
    lines = ["| task | " + " | ".join(METRIC_NAMES) + " |", "|---|" + "---|" * len(METRIC_NAMES)]
    rows = [("bbox", "bbox"), ("segm", "segm"), ("segm_filled_boxes", "segm, filled boxes")]
    for key, label in rows:
        if key in report:
            lines.append(f"| {label} | " + " | ".join(f"{report[key][k]:.1f}" for k in METRIC_NAMES) + " |")
    if "verdict" in report:
        lines.append("")
        lines.append(report["verdict"]["line"])
    if report.get("heals"):
        lines.append(describe_heals(report["heals"]))
    return "\n".join(lines)
