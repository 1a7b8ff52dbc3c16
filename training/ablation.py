"""The paper's mask-loss ablation (Table 1a / Table 2) on the synthetic shapes set.

    python -m training.ablation --out outputs/ablation [--pretrain-iters P] [--iters N]
    python -m training.ablation --out outputs/ablation_4800 --iters 4800 --shared outputs/ablation
    python -m training.ablation --out outputs/ablation_1200 --shared outputs/ablation --only c_boxinst_tau0.3,semi,holes

Protocol. The paper starts every variant from the same ImageNet-pretrained backbone. Nothing may
be downloaded here, so the shared starting point is a `lite` detector trained once from scratch on
the training split's boxes with the detection losses only (`box_loss="none"`: no mask loss of any
kind, so it carries no mask information into the box-supervised variants). Every variant then
trains all weights from that checkpoint with the same schedule (N iterations) and seed, differing
only in its mask loss, and is evaluated with pycocotools mask AP. `--shared DIR` takes the shapes set and
the detector of an earlier run, so another schedule starts from the same point. `--pretrain-iters 0` trains every
variant from scratch instead.

Writes OUT/ablation.json and OUT/ablation.md. Finished runs are skipped when the command is run
again, and an interrupted run resumes from its last checkpoint."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from boxinst_serve.config import ModelConfig, preset
from training.config import REFERENCE_ITERS, LossConfig, TrainConfig
from boxinst_serve.files import write_json_atomic
from training.evaluate import evaluate, hole_fill_fraction, matched_mask_iou, per_category_ap


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    loss: LossConfig


VARIANTS = (  # in the order they are trained: those the targets compare first
    Variant("c_boxinst_tau0.1", "(c) projection + pairwise, tau 0.1", LossConfig(pairwise_color_thresh=0.1)),
    Variant("d_fully_supervised", "(d) fully supervised (dice on GT masks)", LossConfig(supervision="mask")),
    Variant("b_projection", "(b) projection term only", LossConfig(box_loss="projection")),
    Variant("a_filled_box", "(a) filled-box masks (dice vs box bitmask)", LossConfig(box_loss="filled_box")),
    Variant("e_boxinst_tau0", "(e) projection + pairwise, tau 0", LossConfig(pairwise_color_thresh=0.0)),
    Variant("c_boxinst_tau0.3", "(c) projection + pairwise, tau 0.3", LossConfig(pairwise_color_thresh=0.3)),
)
# The shared starting point: detection losses only (no mask loss), see the module docstring.
DETECTOR = Variant("p_detector", "shared detector (detection losses only)", LossConfig(box_loss="none"))

# The paper's semi-supervised setting (Table 6) on the shapes: group A with masks, group B from its boxes.
# Complementary splits, like the paper's 20 VOC / 60 non-VOC classes and back; the ring, the one
# category with an enclosed hole, is in A in the first and in B in the second.
SPLITS = {
    "split1": ("circle", "triangle", "ring"),
    "split2": ("rectangle", "star", "cross", "crescent"),
}
SEMI_LOSSES = (("none", "no mask loss"), ("projection", "projection term"), ("boxinst", "both terms"))
SEMI_VARIANTS = tuple(
    Variant(f"{split}_{box_loss}", f"masks for {'/'.join(group)}; {label} for the others",
            LossConfig(supervision="mixed", box_loss=box_loss, mask_classes=group))
    for split, group in SPLITS.items() for box_loss, label in SEMI_LOSSES)
# Beyond the paper: BoxInst (tau 0.3) with the opt-in loss for enclosed background.
HOLE_VARIANTS = (Variant("h_boxinst_holes", "(c) tau 0.3 + hole loss, mean over hole pixels, weight 1, from the start",
                         LossConfig(pairwise_color_thresh=0.3, hole_loss_weight=1.0, hole_normalize="holes",
                                    hole_loss_start_iters=0)),
                 # that one collapses every mask to an outline (docs/results.md); so does this one, later and lighter
                 Variant("h_boxinst_holes_late", "(c) tau 0.3 + hole loss, mean over hole pixels, weight 0.25, from 1/3",
                         LossConfig(pairwise_color_thresh=0.3, hole_loss_weight=0.25, hole_normalize="holes",
                                    hole_loss_start_iters=REFERENCE_ITERS // 3)),
                 # the working recipe (LossConfig's defaults): each hole pixel weighs as one box pixel, from 1/3
                 Variant("h_boxinst_holes_box", "(c) tau 0.3 + hole loss over box pixels, weight 1, from 1/3",
                         LossConfig(pairwise_color_thresh=0.3, hole_loss_weight=1.0, hole_normalize="box",
                                    hole_loss_start_iters=REFERENCE_ITERS // 3)))
EXTRA = {"semi": SEMI_VARIANTS, "holes": HOLE_VARIANTS}
HOLED = ("ring",)  # the categories with an enclosed hole


def target_lines(rows: dict[str, dict]) -> list[str]:
    """The issue's targets, checked on the measured mask APs: (c) >= 0.9 x (d), (c) - (b) >= 5 AP
    (for each tau measured), and (e) below (b) (the collapse)."""
    ap = {k: r["segm"]["AP"] for k, r in rows.items()}
    lines = []
    d, b, e = ap.get("d_fully_supervised"), ap.get("b_projection"), ap.get("e_boxinst_tau0")
    for key in ("c_boxinst_tau0.1", "c_boxinst_tau0.3"):
        if key not in ap:
            continue
        c, tau = ap[key], key.split("tau")[1]
        if d is not None and d > 0:
            lines.append(f"- (c) tau {tau} / (d) = {c:.1f} / {d:.1f} = {c / d:.2f} (target >= 0.9: "
                         f"{'holds' if c >= 0.9 * d else 'missed'})")
        if b is not None:
            lines.append(f"- (c) tau {tau} - (b) = {c:.1f} - {b:.1f} = {c - b:+.1f} AP (target >= 5: "
                         f"{'holds' if c - b >= 5 else 'missed'})")
    if e is not None and b is not None:
        lines.append(f"- (e) tau 0: {e:.1f} vs (b) {b:.1f} (collapse: {'yes' if e < b else 'no'})")
    return lines


def _mean_ap(per_category: dict[str, float], names) -> float:
    """Mask AP over a group of categories (COCO's AP averages its categories alike)."""
    values = [per_category[n] for n in names if per_category.get(n, -1) >= 0]
    return sum(values) / len(values) if values else float("nan")


def restated_target_lines(rows: dict[str, dict]) -> list[str]:
    """(c) tau 0.3 / (d) >= 0.87 over the categories without an enclosed hole, rings apart."""
    c, d = rows.get("c_boxinst_tau0.3"), rows.get("d_fully_supervised")
    if not c or not d:
        return []
    cats = [n for n in c["segm_per_category"] if n not in HOLED]
    ac, ad = _mean_ap(c["segm_per_category"], cats), _mean_ap(d["segm_per_category"], cats)
    rings = ", ".join(f"{n} {c['segm_per_category'][n]:.1f} vs {d['segm_per_category'][n]:.1f}" for n in HOLED)
    return [f"- restated: (c) tau 0.3 / (d) over the {len(cats)} categories without an enclosed hole = {ac:.1f} / "
            f"{ad:.1f} = {ac / ad:.3f} (target >= 0.87: {'holds' if ac >= 0.87 * ad else 'missed'}); apart: {rings}"]


def semi_supervised_lines(rows: dict[str, dict]) -> list[str]:
    """The paper's Table 6 on the shapes: mask AP on group B (the classes without masks) and on all."""
    lines = []
    for split, group in SPLITS.items():
        keys = [f"{split}_{b}" for b, _ in SEMI_LOSSES] + ["c_boxinst_tau0.3", "d_fully_supervised"]
        present = [k for k in keys if k in rows]
        if not any(k.startswith(split) for k in present):
            continue
        cats = list(next(iter(rows.values()))["segm_per_category"])
        group_b = [n for n in cats if n not in group]
        lines += ["", f"Semi-supervised, {split}: masks for group A = {', '.join(group)}; group B = "
                      f"{', '.join(group_b)} trained from boxes.", "",
                  "| variant | mask AP on group B | mask AP on all | hole pixels predicted as object |",
                  "|---|---|---|---|"]
        for k in present:
            r = rows[k]
            label = r["label"] if not k.startswith("c_") and not k.startswith("d_") else \
                {"c_boxinst_tau0.3": "box-only everywhere: (c) tau 0.3",
                 "d_fully_supervised": "masks everywhere: (d)"}[k]
            lines.append(f"| {label} | {_mean_ap(r['segm_per_category'], group_b):.1f} | {r['segm']['AP']:.1f} | "
                         f"{r['holes']['filled']:.2f} |")
    return lines


def hole_lines(rows: dict[str, dict]) -> list[str]:
    """The enclosed-background loss variants against (c) tau 0.3: rings, holes, the other categories."""
    c = rows.get("c_boxinst_tau0.3")
    hs = [rows[v.key] for v in HOLE_VARIANTS if v.key in rows]
    if not c or not hs:
        return []
    cats = [n for n in c["segm_per_category"] if n not in HOLED]
    lines = ["", "Enclosed-background loss (beyond the paper) against (c) tau 0.3:", "",
             "| variant | ring mask AP | hole pixels predicted as object | mask AP, other categories | mask AP |",
             "|---|---|---|---|---|"]
    for r in (c, *hs):
        lines.append(f"| {r['label']} | {r['segm_per_category']['ring']:.1f} | {r['holes']['filled']:.2f} | "
                     f"{_mean_ap(r['segm_per_category'], cats):.1f} | {r['segm']['AP']:.1f} |")
    lines.append("")
    for h in hs:
        drop = _mean_ap(c["segm_per_category"], cats) - _mean_ap(h["segm_per_category"], cats)
        ring = h["segm_per_category"]["ring"] - c["segm_per_category"]["ring"]
        lines.append(f"- {h['label']}: other categories {-drop:+.1f} AP (target: no drop of more than 1 point: "
                     f"{'holds' if drop <= 1.0 else 'missed'}); ring {ring:+.1f} AP, "
                     f"hole fill {c['holes']['filled']:.2f} -> {h['holes']['filled']:.2f}")
    return lines


def select_variants(only: str = "", extra: str = "") -> list[Variant]:
    """The variants a run trains, in training order: the six of Table 1a plus the sets named in
    `extra` (comma-separated: semi, holes), or, with `only`, just those keys and sets."""
    unknown = sorted(set(extra.split(",")) - set(EXTRA) - {""})
    if unknown:
        raise ValueError(f"--extra {unknown}: choose from {sorted(EXTRA)}")
    if not only:
        return list(VARIANTS) + [v for name in extra.split(",") if name for v in EXTRA[name]]
    wanted = {k for name in only.split(",") for k in ([v.key for v in EXTRA[name]] if name in EXTRA else [name])}
    known = [*VARIANTS, *SEMI_VARIANTS, *HOLE_VARIANTS]
    unknown = sorted(wanted - {v.key for v in known})
    if unknown:
        raise ValueError(f"--only {unknown}: choose from {[v.key for v in known]} or a set {sorted(EXTRA)}")
    return [v for v in known if v.key in wanted]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/ablation")
    p.add_argument("--iters", type=int, default=1200, help="iterations of each variant")
    p.add_argument("--pretrain-iters", type=int, default=4000,
                   help="iterations of the shared detector (0: every variant from scratch)")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01,
                   help="learning rate (default 0.01: the rate the tables of docs/results.md's ablation were measured "
                        "at, the paper's and `boxinst train`'s default at any batch)")
    p.add_argument("--only", default="", help="comma-separated variant keys or set names (semi, holes): run only "
                                              "these, e.g. c_boxinst_tau0.3,semi,holes")
    p.add_argument("--extra", default="", help="also run these sets: semi (the paper's Table 6 on two class "
                                               "splits), holes (the enclosed-background loss); e.g. semi,holes")
    p.add_argument("--shared", default="",
                   help="take the shapes set and the shared detector from this earlier ablation folder (e.g. "
                        "outputs/ablation) instead of making them, so another schedule starts from the same point")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


def _shapes_set(shared: Path, args: argparse.Namespace) -> Path:
    """The shapes folder (train.json, val.json) under `shared`: made there unless it exists; with
    --shared it must exist (FileNotFoundError)."""
    from training.shapes import make_shapes

    data = shared / "shapes"
    if args.shared and not (data / "val.json").exists():
        raise FileNotFoundError(f"--shared {shared}: no shapes set '{data / 'val.json'}' (run the ablation there first)")
    if not (data / "val.json").exists():
        make_shapes(data, args.num_images, seed=args.seed, size=args.size)
    return data


def ablation_pairwise_warmup(iters: int) -> int:
    """The pairwise warm-up the ablation's tables were measured with: the paper's 10k of 90k
    iterations scaled linearly to `iters` (133 at 1200), without the floor that `boxinst train`
    has had since (training/config.py MIN_PAIRWISE_WARMUP_ITERS: 400 at 1200). The ablation keeps
    its own rule so that `make ablation` runs the recipe docs/results.md reports; at 3600
    iterations and more the two rules agree."""
    return max(1, round(LossConfig().pairwise_warmup_iters * iters / REFERENCE_ITERS))


def variant_config(iters: int, loss: LossConfig, size: int = 224, seed: int = 0, lr: float = 0.01) -> TrainConfig:
    """The TrainConfig of one ablation run of `iters` (a variant, or the shared detector): batch 4,
    short sides size-32/size/size+32, long side 2 x size, the reference schedule scaled to `iters`
    with the pairwise warm-up of ablation_pairwise_warmup (docs/results.md's protocol)."""
    cfg = TrainConfig.scaled(iters, batch_size=4, min_sizes=(size - 32, size, size + 32), max_size=2 * size,
                             num_workers=1, seed=seed, loss=loss, log_period=50, lr=lr)
    cfg.loss = dataclasses.replace(cfg.loss, pairwise_warmup_iters=ablation_pairwise_warmup(iters))
    return cfg


def _train_variant(v: Variant, run: Path, iters: int, init: Path | None, data: Path, model_cfg: ModelConfig,
                   args: argparse.Namespace) -> Path:
    """Train variant `v` into the folder `run` (from `init`'s weights when given) and return its
    `final.pt`: a finished run is kept as it is, an interrupted one resumed from its `last.pt`."""
    from training.trainer import train

    if (run / "final.pt").exists():
        return run / "final.pt"
    cfg = variant_config(iters, v.loss, size=args.size, seed=args.seed, lr=args.lr)
    resume = (run / "last.pt").exists()
    return train(model_cfg, cfg, str(data / "train.json"), str(run), resume=resume,
                 init_checkpoint=str(init) if init else None, progress=False)


def _shared_detector(shared: Path, data: Path, model_cfg: ModelConfig, args: argparse.Namespace) -> Path | None:
    """The shared starting point's `final.pt` (trained unless done; with --shared it must be done:
    FileNotFoundError), or None with --pretrain-iters 0 (every variant from scratch)."""
    if args.pretrain_iters <= 0:
        return None
    if args.shared and not (shared / DETECTOR.key / "final.pt").exists():
        raise FileNotFoundError(f"--shared {shared}: no finished detector '{shared / DETECTOR.key / 'final.pt'}'")
    return _train_variant(DETECTOR, shared / DETECTOR.key, args.pretrain_iters, None, data, model_cfg, args)


def _evaluated_variant(v: Variant, run: Path, init: Path | None, data: Path, model_cfg: ModelConfig,
                       args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Variant `v`'s (COCO eval report, predictions on the validation split), read from `run`;
    trained and evaluated first unless its `eval.json` exists (written atomically, last)."""
    result = run / "eval.json"
    if not result.exists():
        final = _train_variant(v, run, args.iters, init, data, model_cfg, args)
        report = evaluate(str(final), str(data / "val.json"), json_out=str(run / "predictions.json"),
                          progress=False)
        write_json_atomic(result, report)
    report = json.loads(result.read_text())
    return report, json.loads((run / "predictions.json").read_text())["predictions"]


def _variant_row(v: Variant, report: dict, gt, preds: list[dict]) -> dict:
    """One variant's row of ablation.json: its APs, the mean IoU of its matched masks, mask AP per
    category, hole fill (`gt`: the validation split as a pycocotools COCO)."""
    return {"label": v.label, "segm": report["segm"], "bbox": report["bbox"],
            "segm_class_agnostic": report["segm_class_agnostic"], "matched": matched_mask_iou(gt, preds),
            "segm_per_category": per_category_ap(gt, preds), "holes": hole_fill_fraction(gt, preds)}


def _detector_bbox(init: Path | None, shared: Path, data: Path) -> dict | None:
    """How well the shared starting point detects (box AP; its masks are untrained), evaluated once
    into its `eval.json`; None without one."""
    if init is None:
        return None
    result = shared / DETECTOR.key / "eval.json"
    if not result.exists():
        write_json_atomic(result, evaluate(str(init), str(data / "val.json"), progress=False))
    return json.loads(result.read_text())["bbox"]


def _results_table(rows: dict[str, dict]) -> list[str]:
    """The markdown table of ablation.md: one line per variant."""
    lines = ["| variant | mask AP | AP50 | AP75 | class-agnostic mask AP | box AP | mean mask IoU of matched objects "
             "| hole pixels predicted as object |", "|---|---|---|---|---|---|---|---|"]
    for r in rows.values():
        s, b, a, m, h = r["segm"], r["bbox"], r["segm_class_agnostic"], r["matched"], r["holes"]
        lines.append(f"| {r['label']} | {s['AP']:.1f} | {s['AP50']:.1f} | {s['AP75']:.1f} | {a['AP']:.1f} | "
                     f"{b['AP']:.1f} | {m['mask_iou']:.3f} ({m['matched']} objects; filled boxes "
                     f"{m['filled_box_iou']:.3f}) | {h['filled']:.2f} ({h['matched']} objects with a hole) |")
    return lines


def _per_category_table(rows: dict[str, dict]) -> list[str]:
    """Mask AP per category (a variant per line), after a blank line; [] without rows."""
    if not rows:
        return []
    cats = list(next(iter(rows.values()))["segm_per_category"])
    return (["", "Mask AP per category:", "", "| variant | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
            + [f"| {r['label']} | " + " | ".join(f"{r['segm_per_category'][c]:.1f}" for c in cats) + " |"
               for r in rows.values()])


def _report_lines(rows: dict[str, dict], detector: dict | None, pretrain_iters: int) -> list[str]:
    """ablation.md: the results table, the shared starting point's box AP, mask AP per category,
    then the paper's targets and the semi-supervised and hole comparisons."""
    lines = _results_table(rows)
    if detector is not None:
        lines += ["", f"Shared starting point ({pretrain_iters} iterations, detection losses only): "
                      f"box AP {detector['AP']:.1f}, AP50 {detector['AP50']:.1f}."]
    lines += _per_category_table(rows)
    lines += [""] + target_lines(rows) + restated_target_lines(rows)
    lines += semi_supervised_lines(rows) + hole_lines(rows)
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    variants = select_variants(args.only, args.extra)
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pycocotools.coco import COCO

    out = Path(args.out)
    shared = Path(args.shared) if args.shared else out
    data = _shapes_set(shared, args)
    model_cfg = preset("lite").replace(min_size_test=args.size, max_size_test=2 * args.size)
    init = _shared_detector(shared, data, model_cfg, args)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(data / "val.json"))
    rows = {}
    for v in variants:
        report, preds = _evaluated_variant(v, out / v.key, init, data, model_cfg, args)
        rows[v.key] = _variant_row(v, report, gt, preds)
        print(f"{v.label}: mask AP {report['segm']['AP']:.1f}, box AP {report['bbox']['AP']:.1f}", flush=True)
    detector = _detector_bbox(init, shared, data)
    write_json_atomic(out / "ablation.json",
                      {"iters": args.iters, "pretrain_iters": args.pretrain_iters, "shared": args.shared or None,
                       "num_images": args.num_images,
                       "size": args.size, "detector_bbox": detector, "rows": rows})
    lines = _report_lines(rows, detector, args.pretrain_iters)
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
