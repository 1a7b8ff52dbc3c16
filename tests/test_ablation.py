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


def _cat_row(label: str, ap: float, per_cat: dict, filled: float) -> dict:
    return {"label": label, "segm": {"AP": ap}, "segm_per_category": per_cat, "holes": {"filled": filled}}


CATS = ("circle", "rectangle", "triangle", "ring", "star", "cross", "crescent")


def test_restated_target_leaves_the_rings_apart():
    c = _cat_row("(c)", 50.0, dict(zip(CATS, (80, 70, 55, 19, 50, 55, 40))), 0.99)
    d = _cat_row("(d)", 65.0, dict(zip(CATS, (83, 75, 62, 58, 59, 62, 58))), 0.17)
    text = "\n".join(ablation.restated_target_lines({"c_boxinst_tau0.3": c, "d_fully_supervised": d}))
    assert "over the 6 categories without an enclosed hole = 58.3 / 66.5 = 0.877 (target >= 0.87: holds)" in text
    assert "ring 19.0 vs 58.0" in text


def test_semi_supervised_table_reports_group_b_and_all():
    per = dict(zip(CATS, (10, 20, 30, 40, 50, 60, 70)))
    rows = {"split1_boxinst": _cat_row("masks for circle/triangle/ring; both terms", 45.0, per, 0.5),
            "c_boxinst_tau0.3": _cat_row("(c)", 40.0, per, 0.9)}
    text = "\n".join(ablation.semi_supervised_lines(rows))
    assert "group B = rectangle, star, cross, crescent" in text
    assert "| masks for circle/triangle/ring; both terms | 50.0 | 45.0 | 0.50 |" in text  # (20+50+60+70)/4
    assert "| box-only everywhere: (c) tau 0.3 | 50.0 | 40.0 | 0.90 |" in text
    assert "split2" not in text


def test_hole_lines_check_the_other_categories():
    c = _cat_row("(c)", 50.0, dict(zip(CATS, (80, 70, 55, 19, 50, 55, 40))), 0.99)
    h = _cat_row("(h)", 52.0, dict(zip(CATS, (80, 69, 55, 40, 49, 55, 40))), 0.30)
    text = "\n".join(ablation.hole_lines({"c_boxinst_tau0.3": c, "h_boxinst_holes": h}))
    assert "(h): other categories -0.3 AP (target: no drop of more than 1 point: holds)" in text
    assert "ring +21.0 AP, hole fill 0.99 -> 0.30" in text


def test_semi_supervised_and_hole_variants_run_from_the_shared_detector(tmp_path):
    out = tmp_path / "abl"
    assert ablation.main(["--out", str(out), "--iters", "2", "--pretrain-iters", "2", "--num-images", "10",
                          "--size", "96", "--only", "split2_boxinst,h_boxinst_holes"]) == 0
    result = json.loads((out / "ablation.json").read_text())
    assert set(result["rows"]) == {"split2_boxinst", "h_boxinst_holes"}
    cfg = json.loads((out / "split2_boxinst" / "config.json").read_text())["train"]["loss"]
    assert cfg["supervision"] == "mixed" and cfg["mask_classes"] == ["rectangle", "star", "cross", "crescent"]
    assert json.loads((out / "h_boxinst_holes" / "config.json").read_text())["train"]["loss"]["hole_loss_weight"] == 1.0
    with pytest.raises(ValueError, match="--extra"):
        ablation.main(["--out", str(out), "--extra", "everything"])


def test_only_takes_set_names_and_refuses_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match=r"--only \['split9_none'\]"):
        ablation.main(["--out", str(tmp_path / "x"), "--only", "semi,split9_none"])
    with pytest.raises(ValueError, match=r"--extra \['hole'\]"):
        ablation.main(["--out", str(tmp_path / "x"), "--extra", "hole"])
    assert not (tmp_path / "x").exists()  # refused before any data or training


def test_select_variants_expands_set_names():
    keys = [v.key for v in ablation.select_variants("c_boxinst_tau0.3,semi,holes")]
    assert keys[0] == "c_boxinst_tau0.3" and len(keys) == 1 + 6 + len(ablation.HOLE_VARIANTS)
    assert {"split1_none", "split2_boxinst", "h_boxinst_holes_late"} <= set(keys)
    assert [v.key for v in ablation.select_variants()] == [v.key for v in ablation.VARIANTS]
    assert len(ablation.select_variants(extra="semi")) == len(ablation.VARIANTS) + 6


def test_the_ablation_runs_the_recipe_docs_results_reports():
    """`make ablation` must run the protocol docs/results.md states (the recipe its table was measured
    with), whatever `boxinst train`'s defaults become: parsed from the paragraph, compared with
    what training.ablation builds for a variant."""
    import re
    from pathlib import Path

    from training.config import LossConfig

    text = " ".join((Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text().split())
    m = re.search(r"(\d+) iterations of batch (\d+), short side (\d+)/(\d+)/(\d+), lr ([\d.]+) with warm-up and "
                  r"steps at (\d+) and (\d+), pairwise warm-up (\d+) iterations", text)
    assert m, "docs/results.md no longer states the ablation's recipe in the form this test reads"
    iters, batch, s1, s2, s3, lr, step1, step2, pairwise = m.groups()
    cfg = ablation.variant_config(int(iters), LossConfig(), size=int(s2), lr=ablation._parse_args([]).lr)
    assert (cfg.iters, cfg.batch_size, cfg.min_sizes, cfg.lr) == (int(iters), int(batch), (int(s1), int(s2), int(s3)),
                                                                 float(lr))
    assert cfg.step_iters() == [int(step1), int(step2)]
    assert cfg.loss.pairwise_warmup_iters == int(pairwise) == 133  # not boxinst train's floor of 400
    defaults = ablation._parse_args([])
    assert (defaults.iters, defaults.size) == (int(iters), int(s2))  # what `make ablation` passes: nothing
