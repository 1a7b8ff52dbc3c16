"""The training loop: checkpoints load safely, resume replays the same schedule exactly,
non-finite losses are skipped then abort, and two gloo processes stay identical."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import training.trainer as trainer
from boxinst_serve.checkpoint import load_checkpoint
from boxinst_serve.config import lite
from training.config import TrainConfig


def _cfg(iters: int, **kw) -> TrainConfig:
    return TrainConfig.scaled(iters, batch_size=2, min_sizes=(128,), max_size=160, num_workers=0,
                              log_period=1, **kw)


def test_checkpoint_has_config_and_loads_without_unpickling(tiny_shapes, tmp_path):
    final = trainer.train(lite(), _cfg(2), tiny_shapes["train"], tmp_path / "run", progress=False)
    raw = torch.load(final, weights_only=True)  # plain tensors and python values only
    assert raw["iteration"] == 2
    ckpt = load_checkpoint(final)
    assert ckpt["model_config"].name == "lite"
    assert ckpt["model_config"].num_classes == 7 and len(ckpt["model_config"].class_names) == 7
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [1, 2]
    assert (tmp_path / "run" / "last.pt").exists()


def test_final_checkpoint_holds_weights_only_and_last_the_optimizer(tiny_shapes, tmp_path):
    final = trainer.train(lite(), _cfg(2), tiny_shapes["train"], tmp_path / "run", progress=False)
    last = tmp_path / "run" / "last.pt"
    assert "optimizer" not in torch.load(final, weights_only=True)  # what eval/export/--init read
    assert "optimizer" in torch.load(last, weights_only=True)  # what --resume reads
    assert final.stat().st_size < 0.6 * last.stat().st_size  # SGD momentum doubles the bytes
    a, b = load_checkpoint(final)["model"], load_checkpoint(last)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def deterministic():
    """Bitwise-reproducible CPU training (multi-threaded reductions are not)."""
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)


def test_resume_continues_with_the_identical_schedule(tiny_shapes, tmp_path, monkeypatch, deterministic):
    cfg = _cfg(4, checkpoint_period=2)
    straight = trainer.train(lite(), cfg, tiny_shapes["train"], tmp_path / "a", progress=False)

    calls = {"n": 0}
    real = trainer.compute_losses

    def dies_at_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed mid-way, after the checkpoint at iteration 2
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "compute_losses", dies_at_third_step)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(lite(), cfg, tiny_shapes["train"], tmp_path / "b", progress=False)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["iteration"] == 2
    monkeypatch.setattr(trainer, "compute_losses", real)
    resumed = trainer.train(lite(), cfg, tiny_shapes["train"], tmp_path / "b", resume=True, progress=False)

    a, b = load_checkpoint(straight)["model"], load_checkpoint(resumed)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_batches_after_resume_are_the_tail_of_an_uninterrupted_run():
    full = list(trainer.IterationBatchSampler(10, 3, 8, 0, seed=1, rank=0, world_size=2))
    tail = list(trainer.IterationBatchSampler(10, 3, 8, 5, seed=1, rank=0, world_size=2))
    assert tail == full[5:]
    other_rank = list(trainer.IterationBatchSampler(10, 3, 8, 0, seed=1, rank=1, world_size=2))
    assert all(set(a).isdisjoint(b) for a, b in zip(full, other_rank))  # ranks see different samples


def test_resume_without_checkpoint_is_a_clear_error(tiny_shapes, tmp_path):
    with pytest.raises(FileNotFoundError, match="last.pt"):
        trainer.train(lite(), _cfg(2), tiny_shapes["train"], tmp_path / "none", resume=True, progress=False)


def test_non_finite_losses_skip_steps_then_abort(tiny_shapes, tmp_path, monkeypatch):
    def nan_losses(out, *args, **kwargs):
        return {"loss_nan": out.mask_feats.sum() * float("nan")}

    monkeypatch.setattr(trainer, "compute_losses", nan_losses)
    cfg = _cfg(10, max_nonfinite=3)
    with pytest.raises(RuntimeError, match="3 non-finite losses in a row"):
        trainer.train(lite(), cfg, tiny_shapes["train"], tmp_path / "run", progress=False)


def test_one_non_finite_loss_is_skipped_and_training_goes_on(tiny_shapes, tmp_path, monkeypatch):
    real = trainer.compute_losses
    calls = {"n": 0}

    def once_nan(out, *args, **kwargs):
        calls["n"] += 1
        losses = real(out, *args, **kwargs)
        if calls["n"] == 2:
            losses["loss_fcos_cls"] = losses["loss_fcos_cls"] * float("inf")
        return losses

    monkeypatch.setattr(trainer, "compute_losses", once_nan)
    final = trainer.train(lite(), _cfg(3), tiny_shapes["train"], tmp_path / "run", progress=False)
    state = load_checkpoint(final)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_two_gloo_processes_keep_replicas_identical(tiny_shapes, tmp_path):
    run = tmp_path / "ddp"
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
           "-m", "boxinst_serve.cli", "train", "--data", tiny_shapes["train"], "--config", "lite",
           "--iters", "3", "--batch-size", "4", "--min-sizes", "128", "--max-size", "160", "--workers", "0",
           "--log-period", "1", "--device", "cpu", "--out", str(run), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["replicas_identical"] is True
    assert len(records[-1]["replica_checksums"]) == 2
    assert load_checkpoint(run / "final.pt")["iteration"] == 3


def test_ctrl_c_stops_at_an_iteration_boundary_and_resume_matches(tiny_shapes, tmp_path, monkeypatch,
                                                                    deterministic):
    cfg = _cfg(6, checkpoint_period=100)
    straight = trainer.train(lite(), cfg, tiny_shapes["train"], tmp_path / "a", progress=False)
    real = trainer.compute_losses
    calls = {"n": 0}

    def ctrl_c_during_fourth_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)  # lands mid-iteration, after the forward pass
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "compute_losses", ctrl_c_during_fourth_step)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(lite(), cfg, tiny_shapes["train"], tmp_path / "b", progress=False)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["iteration"] == 4  # the 4th step was finished
    monkeypatch.setattr(trainer, "compute_losses", real)
    resumed = trainer.train(lite(), cfg, tiny_shapes["train"], tmp_path / "b", resume=True, progress=False)
    a, b = load_checkpoint(straight)["model"], load_checkpoint(resumed)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_starts_from_all_weights_of_another_run(tiny_shapes, tmp_path):
    first = trainer.train(lite(), _cfg(2), tiny_shapes["train"], tmp_path / "a", progress=False)
    # lr 0: the parameters cannot move, so the second run ends where its initialisation put them.
    second = trainer.train(lite(), _cfg(2, lr=0.0), tiny_shapes["train"], tmp_path / "b",
                           init_checkpoint=str(first), progress=False)
    scratch = trainer.train(lite(), _cfg(2, lr=0.0, seed=5), tiny_shapes["train"], tmp_path / "c", progress=False)
    a, b, c = (load_checkpoint(p)["model"] for p in (first, second, scratch))
    params = [k for k in a if "running_" not in k and "num_batches" not in k]  # BN statistics move with lr 0
    assert all(torch.equal(a[k], b[k]) for k in params)
    assert not all(torch.equal(a[k], c[k]) for k in params)  # without --init it would not
    assert load_checkpoint(second)["iteration"] == 2  # a fresh schedule, not the other run's


def test_init_from_another_architecture_or_class_list_is_a_clear_error(tiny_shapes, tmp_path):
    from boxinst_serve.checkpoint import save_atomic
    from boxinst_serve.model import build_model

    first = trainer.train(lite(), _cfg(1), tiny_shapes["train"], tmp_path / "a", progress=False)
    ckpt = torch.load(first, weights_only=True)
    renamed = dict(ckpt, model_config=dict(ckpt["model_config"], class_names=["x"] * 7))
    save_atomic(renamed, tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match="classes"):
        trainer.train(lite(), _cfg(1), tiny_shapes["train"], tmp_path / "b", init_checkpoint=str(tmp_path / "renamed.pt"),
                      progress=False)
    narrow = load_checkpoint(first)["model_config"].replace(head_channels=32)
    save_atomic({"model": build_model(narrow).state_dict(), "model_config": narrow.to_dict()}, tmp_path / "narrow.pt")
    with pytest.raises(ValueError, match="another architecture"):
        trainer.train(lite(), _cfg(1), tiny_shapes["train"], tmp_path / "c", init_checkpoint=str(tmp_path / "narrow.pt"),
                      progress=False)


def test_detection_only_training_has_no_mask_loss(tiny_shapes, tmp_path):
    from training.config import LossConfig

    trainer.train(lite(), _cfg(2, loss=LossConfig(box_loss="none")), tiny_shapes["train"], tmp_path / "a",
                  progress=False)
    for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        assert m["loss_prj"] == m["loss_pairwise"] == m["loss_mask"] == 0.0
        assert m["loss_fcos_cls"] > 0 and m["loss_fcos_loc"] > 0


def test_mixed_supervision_with_box_loss_none_trains_masks_only_from_gt_masks(tiny_shapes, tmp_path):
    from training.config import LossConfig

    data = json.loads(Path(tiny_shapes["train"]).read_text())
    for ann in data["annotations"][::2]:  # half the objects lose their mask
        del ann["segmentation"]
    half = tmp_path / "half.json"
    half.write_text(json.dumps(data))
    trainer.train(lite(), _cfg(2, loss=LossConfig(supervision="mixed", box_loss="none")), str(half),
                  tmp_path / "a", images_dir=tiny_shapes["images"], progress=False)
    for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        assert m["loss_prj"] == m["loss_pairwise"] == 0.0  # no box term for the objects without a mask
        assert m["loss_mask"] > 0  # dice on the others
