"""training.ablation: the shared-detector protocol end to end at toy size, and the target check."""
from __future__ import annotations

import json

import pytest

from boxinst_serve.checkpoint import load_checkpoint
from training import ablation


def _row(ap: float) -> dict:
    return {"segm": {"AP": ap}}


def test_target_lines_hold_and_miss():
    rows = {"c_boxinst_tau0.1": _row(30.0), "d_fully_supervised": _row(32.0), "b_projection": _row(24.0),
            "e_boxinst_tau0": _row(3.0), "c_boxinst_tau0.3": _row(27.0)}
    text = "\n".join(ablation.target_lines(rows))
    assert "(c) tau 0.1 / (d) = 30.0 / 32.0 = 0.94 (target >= 0.9: holds)" in text
    assert "(c) tau 0.1 - (b) = 30.0 - 24.0 = +6.0 AP (target >= 5: holds)" in text
    assert "(c) tau 0.3 / (d) = 27.0 / 32.0 = 0.84 (target >= 0.9: missed)" in text
    assert "(c) tau 0.3 - (b) = 27.0 - 24.0 = +3.0 AP (target >= 5: missed)" in text
    assert "collapse: yes" in text


def test_variants_start_from_the_shared_box_only_detector(tmp_path):
    out = tmp_path / "abl"
    assert ablation.main(["--out", str(out), "--iters", "2", "--pretrain-iters", "3", "--num-images", "10",
                          "--size", "96", "--only", "c_boxinst_tau0.1,b_projection"]) == 0
    detector = load_checkpoint(out / "p_detector" / "final.pt")
    cfg = json.loads((out / "p_detector" / "config.json").read_text())["train"]
    assert cfg["loss"]["box_loss"] == "none" and detector["iteration"] == 3
    result = json.loads((out / "ablation.json").read_text())
    assert set(result["rows"]) == {"c_boxinst_tau0.1", "b_projection"}
    assert result["pretrain_iters"] == 3 and result["detector_bbox"] is not None
    md = (out / "ablation.md").read_text()
    assert "Shared starting point (3 iterations" in md and "(c) tau 0.1 - (b)" in md
    assert "| variant | circle | rectangle |" in md  # mask AP per category
    assert "hole pixels predicted as object" in md and 0.0 <= result["rows"]["b_projection"]["holes"]["filled"] <= 1.0
    assert set(result["rows"]["b_projection"]["segm_per_category"]) >= {"ring", "crescent"}
    # A variant's first step moved the weights away from the detector's, but not far: it started there.
    assert _started_from(load_checkpoint(out / "b_projection" / "final.pt")["model"], detector["model"])
    # Re-running skips everything finished (no training: it would log to metrics.jsonl again).
    before = (out / "b_projection" / "metrics.jsonl").read_text()
    assert ablation.main(["--out", str(out), "--iters", "2", "--pretrain-iters", "3", "--num-images", "10",
                          "--size", "96", "--only", "c_boxinst_tau0.1,b_projection"]) == 0
    assert (out / "b_projection" / "metrics.jsonl").read_text() == before
    # Another schedule from the same start: --shared reads the shapes set and the detector, makes neither.
    longer = tmp_path / "abl_longer"
    assert ablation.main(["--out", str(longer), "--iters", "3", "--pretrain-iters", "3", "--size", "96",
                          "--shared", str(out), "--only", "b_projection", "--threads", "1"]) == 0
    assert not (longer / "shapes").exists() and not (longer / "p_detector").exists()
    variant = load_checkpoint(longer / "b_projection" / "final.pt")
    assert variant["iteration"] == 3 and _started_from(variant["model"], detector["model"])
    assert json.loads((longer / "ablation.json").read_text())["shared"] == str(out)


def test_shared_folder_without_a_detector_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shapes set"):
        ablation.main(["--out", str(tmp_path / "b"), "--shared", str(tmp_path / "missing")])


def _started_from(variant: dict, start: dict) -> bool:
    """A few steps move the weights away from `start`, but not far."""
    magnitude = sum(v.float().abs().sum() for k, v in variant.items() if k.endswith("weight"))
    distance = sum((variant[k].float() - start[k].float()).abs().sum() for k in variant if k.endswith("weight"))
    return bool(0 < distance < 0.05 * magnitude)
