"""The demo recipe over several seeds: does box-only training learn masks on every seed?

    python -m training.seeds --out outputs/seeds --seeds 0,1,2,3,4 [-- extra `boxinst train` flags]

Makes the demo's data once (`boxinst make-shapes --num-images 500 --seed 0 --size 224`, boxes
only for training), then for each seed runs the demo's train line (`boxinst train --config lite
--iters 1200 --seed S`, plus any extra flags after `--`) in its own process, evaluates the final
checkpoint on the validation split at the model's test size (as `boxinst eval` does) and appends a
line to OUT/seeds.jsonl: mask AP, the filled-box AP of the same detections, class-agnostic both,
box AP, the training's collapse warnings, and the verdict (training/evaluate.py's margin). A seed
whose line exists is skipped, so the study resumes where it stopped; a seed's training resumes from
its last checkpoint. Used for docs/results.md's seed table (issue: training convergence).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from training.evaluate import evaluate

DEMO_TRAIN = ["--config", "lite", "--iters", "1200"]


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def make_data(out: Path) -> Path:
    """The demo's shapes set under out/shapes (made once); returns its train json."""
    data = out / "shapes"
    if not (data / "val.json").exists():
        subprocess.run([sys.executable, "-m", "boxinst_serve.cli", "make-shapes", str(data), "--num-images", "500",
                        "--seed", "0", "--size", "224"], check=True)
    return data / "train.json"


def training_windows(run: Path) -> list[dict]:
    """The logging windows training wrote into run/metrics.jsonl (not the replicas' final line)."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if "replica_checksums" not in r]


def collapse_summary(run: Path) -> dict:
    """{"collapse_warnings": windows with a collapse warning, "collapse_at_end": the last
    window's reasons ({} when it looked well)}."""
    windows = training_windows(run)
    return {"collapse_warnings": sum("collapse" in w for w in windows),
            "collapse_at_end": windows[-1].get("collapse", {}) if windows else {}}


def run_seed(out: Path, train_json: Path, seed: int, extra: list[str]) -> dict:
    run = out / f"seed{seed}"
    t0 = time.time()
    cmd = [sys.executable, "-m", "boxinst_serve.cli", "train", "--data", str(train_json), *DEMO_TRAIN,
           "--seed", str(seed), "--out", str(run), "--resume-if-exists", "--quiet", *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    train_s = time.time() - t0
    report = evaluate(str(run / "final.pt"), str(train_json.parent / "val.json"), progress=False)
    return {"seed": seed, "extra": extra, "train_s": round(train_s, 1),
            "box_ap": report["bbox"]["AP"], "mask_ap": report["segm"]["AP"],
            "filled_boxes_ap": report["segm_filled_boxes"]["AP"],
            "class_agnostic": report["segm_class_agnostic"]["AP"],
            "class_agnostic_filled_boxes": report["segm_filled_boxes_class_agnostic"]["AP"],
            "masks_beat_boxes": report["verdict"]["masks_beat_boxes"],
            **collapse_summary(run)}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2, 3, 4])
    p.add_argument("--data", default=None, help="train json to use instead of making the demo's shapes under OUT")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_json = Path(args.data) if args.data else make_data(out)
    table = out / "seeds.jsonl"
    done = {json.loads(line)["seed"] for line in table.read_text().splitlines()} if table.exists() else set()
    for seed in args.seeds:
        if seed in done:
            continue
        rec = run_seed(out, train_json, seed, extra)
        with open(table, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)
    for line in table.read_text().splitlines():
        r = json.loads(line)
        print(f"seed {r['seed']}: mask AP {r['mask_ap']:.1f}, filled boxes {r['filled_boxes_ap']:.1f}, box AP "
              f"{r['box_ap']:.1f} -> {'beat' if r['masks_beat_boxes'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
