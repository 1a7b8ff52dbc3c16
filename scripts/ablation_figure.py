"""Side-by-side masks of ablation variants on validation images holding given categories.

    python scripts/ablation_figure.py --ablation outputs/ablation --categories ring,crescent \
        --variants c_boxinst_tau0.1,d_fully_supervised,b_projection --out docs/images/ablation_rings_crescents.jpg

Rows: images; columns: the image, then each variant's masks (red) of the objects of those
categories, with their ground-truth boxes (green). A detection is an object's when it has the
highest box IoU >= 0.5 among those with score > 0.3."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from boxinst_serve.coco import match_to_detections


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ablation", default="outputs/ablation")
    p.add_argument("--shapes", default="", help="the shapes set (default: ABLATION/shapes, or that of the run "
                                                 "the ablation's --shared named)")
    p.add_argument("--categories", default="ring,crescent")
    p.add_argument("--variants", default="c_boxinst_tau0.1,d_fully_supervised,b_projection")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    root = Path(args.ablation)
    shapes = Path(args.shapes) if args.shapes else root / "shapes"
    if not args.shapes and not shapes.exists() and (root / "ablation.json").exists():
        shared = json.loads((root / "ablation.json").read_text()).get("shared")
        shapes = Path(shared) / "shapes" if shared else shapes
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(shapes / "val.json"))
    wanted = {c["id"] for c in gt.loadCats(gt.getCatIds()) if c["name"] in args.categories.split(",")}
    variants = args.variants.split(",")
    preds = {v: [d for d in json.loads((root / v / "predictions.json").read_text())["predictions"] if d["score"] > 0.3]
             for v in variants}
    rows = []
    for img_id in gt.getImgIds():
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=[img_id])) if a["category_id"] in wanted]
        if not anns:
            continue
        info = gt.loadImgs(img_id)[0]
        image = cv2.imread(str(shapes / "images" / info["file_name"]))
        tiles = [image]
        for v in variants:
            dets = [d for d in preds[v] if d["image_id"] == img_id]
            tile = image.copy()
            for a, j in zip(anns, match_to_detections([a["bbox"] for a in anns], [d["bbox"] for d in dets], 0.5)):
                if j is not None:
                    m = mask_utils.decode(dets[j]["segmentation"]).astype(bool)
                    tile[m] = (0.5 * tile[m] + 0.5 * np.array([0, 0, 255])).astype(np.uint8)
                x, y, w, h = (int(round(t)) for t in a["bbox"])
                cv2.rectangle(tile, (x, y), (x + w, y + h), (0, 255, 0), 1)
            tiles.append(tile)
        rows.append(np.concatenate(tiles, axis=1))
        if len(rows) == args.images:
            break
    if not rows:
        raise SystemExit(f"no validation image holds {args.categories}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, np.concatenate(rows, axis=0), [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {args.out} ({len(rows)} images; columns: image, {', '.join(variants)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
