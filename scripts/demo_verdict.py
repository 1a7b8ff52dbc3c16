"""The last line of `make demo`: did box-only training give masks better than the boxes?

    python scripts/demo_verdict.py outputs/demo/eval.json outputs/demo/run/metrics.jsonl

Reads the report `boxinst eval --json` wrote (its verdict: training/evaluate.py, BEAT_MARGIN_*) and
the training's metrics (collapse warnings of training/collapse.py); prints the verdict line, and
exits 1 with what to do when the masks do not beat the filled boxes of the same detections."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(eval_json: str, metrics_jsonl: str) -> int:
    report = json.loads(Path(eval_json).read_text())
    verdict = report["verdict"]
    print(f"{verdict['line']}; box AP {report['bbox']['AP']:.1f}")
    records = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines()]
    collapse = [r for r in records if "collapse" in r]
    if collapse:
        print(f"training warned that the mask head was not learning in {len(collapse)} logging window(s), first at "
              f"iteration {collapse[0]['iteration']}: {'; '.join(collapse[0]['collapse'].values())}"
              + ("; still at the end" if "collapse" in records[-1] else "; not at the end"))
    if not verdict["masks_beat_boxes"]:
        print("make demo FAILED: this model's masks are no better than its boxes, so box-only training did not work "
              f"here. Look at {metrics_jsonl} (loss_prj_mean, mask_box_fill, mask_outside_fill, mask_spill) and "
              "docs/results.md, \"Box-only training over seeds\"; train again with another --seed or a longer "
              "--iters.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    sys.exit(main(sys.argv[1], sys.argv[2]))
