"""`boxinst annotate`: masks for the ground-truth boxes of a COCO json (the paper's use of BoxInst
as an automatic labeller: boxes in, box-tight masks out).

For every annotation box of every image, a mask is produced and clipped to the box; no annotation
is dropped:

1. a detection of the model whose box has IoU >= `iou_thresh` with the annotation's box gives its
   mask (same class preferred when the json's category maps to a model class; otherwise the
   highest box IoU of any class);
2. otherwise the FCOS location inside the box (all FPN levels; location in the resized input) with
   the highest score, max over classes of sigmoid(cls) x sigmoid(centerness), runs the dynamic
   mask head with its own controller output (no location inside a tiny box: the one nearest its
   centre);
3. a mask that is empty after clipping becomes the filled box.

The output json is the input with `segmentation` (RLE, counts as str), `area` (mask pixels) and
`pseudo_mask` ("detection", "location" or "box") set on every annotation, written atomically.
`mask_iou_report` compares the masks with true ones where the input has them.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from boxinst_serve.checkpoint import load_model
from boxinst_serve.coco import mask_iou, match_to_detections, segmentation_to_rle
from boxinst_serve.config import ModelConfig
from boxinst_serve.files import write_json_atomic
from boxinst_serve.model.dynamic_head import dynamic_mask_logits
from boxinst_serve.model.detect import contract_outputs, detection_masks, flatten_outputs, select_detections
from boxinst_serve.postprocess import instances_for, paste_masks
from boxinst_serve.preprocess import prepare_for, read_image
from boxinst_serve.results import encode_masks

log = logging.getLogger(__name__)


@dataclass
class AnnotateReport:
    images: int = 0
    annotations: int = 0
    from_detections: int = 0
    from_locations: int = 0
    filled_boxes: int = 0  # masks that came out empty inside their box
    seconds: float = 0.0
    # every detection of the model, as COCO results (image_id, category_id, bbox, score, segmentation)
    detections: list[dict[str, Any]] = field(default_factory=list, repr=False)


def _load(obj: str | os.PathLike | dict) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else json.loads(Path(obj).read_text())


def category_maps(categories: list[dict[str, Any]], cfg: ModelConfig) -> tuple[dict[int, int], list[int]]:
    """(json category id -> model class, model class -> json category id (-1: none)).

    By class name where the model has names (as training stores them); else the sorted category
    ids in order, as training numbers them."""
    by_name = {c["name"]: int(c["id"]) for c in categories if "name" in c}
    names = list(cfg.class_names or [])
    if names and any(n in by_name for n in names):
        class_to_cat = [by_name.get(n, -1) for n in names]
    else:
        ids = sorted(int(c["id"]) for c in categories)
        class_to_cat = [ids[c] if c < len(ids) else -1 for c in range(cfg.num_classes)]
    cat_to_class = {cat: c for c, cat in enumerate(class_to_cat) if cat >= 0}
    return cat_to_class, class_to_cat


def box_region(box_xyxy: np.ndarray, h: int, w: int) -> tuple[int, int, int, int]:
    """Integer pixel rows/cols (y0, y1, x0, x1) covered by a float box, at least one pixel."""
    x0 = int(np.clip(np.floor(box_xyxy[0]), 0, w - 1))
    y0 = int(np.clip(np.floor(box_xyxy[1]), 0, h - 1))
    x1 = int(np.clip(np.ceil(box_xyxy[2]), x0 + 1, w))
    y1 = int(np.clip(np.ceil(box_xyxy[3]), y0 + 1, h))
    return y0, y1, x0, x1


def _location_masks(out, flat: dict[str, torch.Tensor], boxes_in: np.ndarray, meta, cfg: ModelConfig) -> np.ndarray:
    """For boxes in network-input pixels [N, 4]: the best-scoring location inside each box ->
    its dynamic-head mask at the original resolution, bool [N, H, W]."""
    locs = flat["locations"]  # [L, 2]
    score = flat["cls_logits"][0].sigmoid().amax(dim=1) * flat["centerness"][0].sigmoid()  # [L]
    chosen = []
    for x0, y0, x1, y1 in boxes_in.tolist():
        inside = (locs[:, 0] >= x0) & (locs[:, 0] <= x1) & (locs[:, 1] >= y0) & (locs[:, 1] <= y1)
        if bool(inside.any()):
            chosen.append(int(torch.where(inside, score, torch.full_like(score, -1.0)).argmax()))
        else:  # a box smaller than the finest stride: the nearest location
            centre = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2], dtype=locs.dtype, device=locs.device)
            chosen.append(int(((locs - centre) ** 2).sum(dim=1).argmin()))
    idx = torch.tensor(chosen, dtype=torch.long, device=locs.device)
    logits = dynamic_mask_logits(out.mask_feats, flat["controller"][0, idx], locs[idx], flat["levels"][idx],
                                 torch.zeros_like(idx), cfg)
    probs = (logits[:, 0].sigmoid().float() * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    return paste_masks(probs, meta, cfg.mask_out_stride, cfg.mask_threshold)


@torch.no_grad()
def annotate(model_path: str | os.PathLike, data_json: str | os.PathLike, images_dir: str | os.PathLike | None,
             out_json: str | os.PathLike, device: str = "cpu", iou_thresh: float = 0.5,
             progress: bool = True) -> AnnotateReport:
    """Write OUT_JSON: DATA_JSON with a box-clipped mask for every annotation (module docstring)."""
    if Path(model_path).suffix.lower() not in (".pt", ".pth"):
        raise ValueError(f"annotate needs a .pt checkpoint (it runs the model's internals), got '{model_path}'")
    t0 = time.perf_counter()
    data = _load(data_json)
    images_dir = Path(images_dir) if images_dir else Path(data_json).parent / "images"
    model = load_model(model_path, device)
    cfg = model.cfg
    cat_to_class, class_to_cat = category_maps(data.get("categories", []), cfg)
    result = copy.deepcopy(data)
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in result.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(ann)
    report = AnnotateReport()
    for im in tqdm(result.get("images", []), desc="annotate", unit="img", disable=not progress):
        anns = by_image.get(im["id"], [])
        if not anns:
            continue
        image = read_image(images_dir / im["file_name"])
        h, w = image.shape[:2]
        batch, metas = prepare_for(cfg, [image])
        meta = metas[0]
        out = model(torch.from_numpy(batch).to(device))
        sel = select_detections(out, cfg, batch.shape[1:3])
        contract = contract_outputs(sel, detection_masks(out.mask_feats, sel, cfg))
        det = instances_for(cfg, {k: v.cpu().numpy() for k, v in contract.items()}, 0, meta)
        report.detections.extend(det.to_coco(im["id"], [c if c >= 0 else i for i, c in enumerate(class_to_cat)]))

        gt_xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        gt = np.concatenate([gt_xywh[:, :2], gt_xywh[:, :2] + gt_xywh[:, 2:]], axis=1)  # xyxy
        det_xywh = np.concatenate([det.boxes[:, :2], det.boxes[:, 2:] - det.boxes[:, :2]], axis=1)
        matches = match_to_detections(gt_xywh, det_xywh, iou_thresh,
                                      [cat_to_class.get(a.get("category_id")) for a in anns], det.classes)
        masks = np.zeros((len(anns), h, w), dtype=bool)
        source = ["location"] * len(anns)
        for g, d in enumerate(matches):
            if d is not None:
                masks[g] = det.masks[d]
                source[g] = "detection"
        todo = [g for g in range(len(anns)) if source[g] == "location"]
        if todo:
            (rh, rw), (oh, ow) = meta.resized_hw, meta.orig_hw
            boxes_in = gt[todo] * np.array([rw / ow, rh / oh, rw / ow, rh / oh])
            masks[todo] = _location_masks(out, flatten_outputs(out, cfg), boxes_in, meta, cfg)
        for g, ann in enumerate(anns):
            y0, y1, x0, x1 = box_region(gt[g], h, w)
            clipped = np.zeros((h, w), dtype=bool)
            clipped[y0:y1, x0:x1] = masks[g][y0:y1, x0:x1]
            if not clipped.any():
                clipped[y0:y1, x0:x1] = True
                source[g] = "box"
            masks[g] = clipped
            report.from_detections += source[g] == "detection"
            report.from_locations += source[g] == "location"
            report.filled_boxes += source[g] == "box"
        for ann, rle, m, src in zip(anns, encode_masks(masks), masks, source):
            ann["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"]}
            ann["area"] = int(m.sum())
            ann["pseudo_mask"] = src
        report.images += 1
        report.annotations += len(anns)
    unannotated = [a for a in result.get("annotations", []) if "pseudo_mask" not in a]
    if unannotated:  # annotations of images missing from "images": kept, but they cannot get a mask
        log.warning("%d annotation(s) refer to images not listed in the json: left without a mask", len(unannotated))
    write_json_atomic(out_json, result)
    report.seconds = time.perf_counter() - t0
    return report


def mask_iou_report(pred_json: str | os.PathLike | dict, gt_json: str | os.PathLike | dict,
                    detections: list[dict[str, Any]] | None = None, iou_thresh: float = 0.5) -> dict[str, Any]:
    """Mean mask IoU against the true masks of gt_json, over its annotations that have one:

    pseudo_label_miou: the masks of pred_json (annotations matched by id);
    detector_miou: the plain detector's own masks (`detections`, COCO results such as
    AnnotateReport.detections), each object matched to the detection of its image with the highest
    box IoU >= iou_thresh (same category preferred); objects without one count as IoU 0. None
    when no detections are given. Also objects, and detector_matched (objects with a detection)."""
    pred, gt = _load(pred_json), _load(gt_json)
    sizes = {im["id"]: (int(im["height"]), int(im["width"])) for im in gt.get("images", [])}
    pred_by_id = {a["id"]: a for a in pred.get("annotations", []) if "id" in a}
    dets_by_image: dict[Any, list[dict[str, Any]]] = {}
    for d in detections or []:
        dets_by_image.setdefault(d["image_id"], []).append(d)
    pseudo, detector, matched = [], [], 0
    for ann in gt.get("annotations", []):
        if ann.get("image_id") not in sizes:
            continue
        h, w = sizes[ann["image_id"]]
        true = segmentation_to_rle(ann.get("segmentation"), h, w)
        if true is None:
            continue
        p = pred_by_id.get(ann.get("id"))
        p_rle = segmentation_to_rle(p.get("segmentation"), h, w) if p else None
        pseudo.append(mask_iou(p_rle, true) if p_rle is not None else 0.0)
        if detections is None:
            continue
        dets = dets_by_image.get(ann["image_id"], [])
        if not dets:
            detector.append(0.0)
            continue
        k = match_to_detections([ann["bbox"]], [d["bbox"] for d in dets], iou_thresh, [ann.get("category_id")],
                                [d["category_id"] for d in dets])[0]
        if k is None:
            detector.append(0.0)
            continue
        matched += 1
        detector.append(mask_iou(segmentation_to_rle(dets[k]["segmentation"], h, w), true))
    return {"objects": len(pseudo),
            "pseudo_label_miou": float(np.mean(pseudo)) if pseudo else 0.0,
            "detector_miou": (float(np.mean(detector)) if detector else 0.0) if detections is not None else None,
            "detector_matched": matched}
