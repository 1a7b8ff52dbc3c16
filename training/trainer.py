"""The training loop: SGD with warm-up and steps, AMP on CUDA, gradient clipping, non-finite
guard, tqdm progress, metrics.jsonl, atomic checkpoints, exact resume, and data parallelism
through torchrun (gloo on CPU, nccl on CUDA)."""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from boxinst_serve.checkpoint import load_checkpoint
from boxinst_serve.config import ModelConfig, pad_value
from boxinst_serve.files import write_json_atomic
from boxinst_serve.model import build_model
from training.checkpoints import FINAL, LAST, load_for_resume, save_checkpoint
from training.collapse import CollapseMonitor, summary as collapse_summary
from training.config import TrainConfig
from training.criterion import compute_losses
from training.heal import (HealState, Snapshot, describe as describe_heals, heal, is_mask_side, looks_healthy,
                           should_heal)
from training.data import CocoBoxDataset, collate
from training.memory import check_memory, estimate_step_memory, largest_padded_hw, peak_resident_bytes

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that torchrun describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class IterationBatchSampler(Sampler):
    """Yields, for iterations start..iters-1, this process's list of (dataset index, augmentation
    seed). The batch of iteration i is a pure function of (seed, i, rank): resuming at iteration i
    replays exactly the batches an uninterrupted run would have seen."""

    def __init__(self, num_items: int, batch_per_process: int, iters: int, start_iter: int,
                 seed: int, rank: int, world_size: int):
        self.n, self.b, self.iters, self.start = num_items, batch_per_process, iters, start_iter
        self.seed, self.rank, self.world = seed, rank, world_size
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        keys = []
        for k in range(self.b):
            g = (iteration * self.world + self.rank) * self.b + k
            epoch, pos = divmod(g, self.n)
            keys.append((int(self._permutation(epoch)[pos]), int(self.seed * 1_000_003 + g)))
        return keys

    def __iter__(self):
        for i in range(self.start, self.iters):
            yield self.batch(i)

    def __len__(self) -> int:
        return max(0, self.iters - self.start)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD; no weight decay on normalisation layers (detectron2's WEIGHT_DECAY_NORM = 0). Four
    groups: the detector's and the mask side's (controller and mask branch, "mask_side": True),
    each with and without decay; each group's step is the schedule's times its "lr_scale" (1; the
    mask side's is lowered by a heal, training/heal.py)."""
    norm_types = (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)
    groups = {(mask, norm): [] for mask in (False, True) for norm in (False, True)}
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(prefix=module_name, recurse=False):
            if p.requires_grad:
                groups[(is_mask_side(name), isinstance(module, norm_types))].append(p)
    return torch.optim.SGD([{"params": params, "weight_decay": 0.0 if norm else cfg.weight_decay,
                             "mask_side": mask, "lr_scale": 1.0}
                            for (mask, norm), params in groups.items()], lr=cfg.lr, momentum=cfg.momentum)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, path: Path) -> None:
    """Load a saved optimizer state (--resume); a `last.pt` of a version before the mask side's
    own groups cannot be continued, which the error says."""
    if len(state["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(f"'{path}' was written by an earlier version of boxinst-serve (its optimizer has "
                         f"{len(state['param_groups'])} parameter groups, this one {len(optimizer.param_groups)}): "
                         "it cannot be resumed; start the run again, or use its weights with --init")
    optimizer.load_state_dict(state)


def parameter_checksum(model: nn.Module) -> float:
    """A float fingerprint of the parameters (for the replicas-identical check). BatchNorm running
    statistics are left out: DDP broadcasts them from rank 0 before each forward, so they differ
    after the last one, and only rank 0's are saved."""
    with torch.no_grad():
        return float(sum(p.double().sum() + (p.double() ** 2).sum() for p in model.parameters()))


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


class _GracefulStop:
    """SIGINT/SIGTERM ask the loop to stop at the next iteration boundary (where a checkpoint is
    consistent: a forward pass has already moved BatchNorm statistics mid-iteration); a second
    SIGINT aborts at once."""

    def __init__(self) -> None:
        self.requested = False

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("signal %d: stopping after this iteration (Ctrl-C again to abort now)", signum)

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        old = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}

        def restore() -> None:
            for sig, handler in old.items():
                signal.signal(sig, handler)

        return restore


def _init_from(model: nn.Module, model_cfg: ModelConfig, path: str, reset_classes: bool = False) -> list[str]:
    """Load the weights of checkpoint `path` into `model` (built from `model_cfg`). Returns the keys
    left at their fresh initialisation: the classification layer, when the data's classes are not
    the checkpoint's (another number of classes, or `reset_classes`). Any other difference is an
    error naming it: a partial or mismatched load would silently train something else."""
    init = load_checkpoint(path)
    init_cfg = init["model_config"]
    differences = init_cfg.weight_differences(model_cfg)
    if differences:
        raise ValueError(f"--init checkpoint '{path}' has another architecture than '{model_cfg.name}' (it differs "
                         f"in {differences}): train with its config (`boxinst train --init` without --config)")
    names, data_names = list(init_cfg.class_names), list(model_cfg.class_names)
    reset: list[str] = []
    state = dict(init["model"])
    if names != data_names:
        if len(names) == len(data_names) and not reset_classes:
            raise ValueError(f"--init checkpoint '{path}' was trained on classes {names}, this data has "
                             f"{data_names}: the same number under other names. Rename the data's categories to "
                             "match, or pass --reset-classes to train a new classification layer")
        reset = [k for k in state if k.startswith("head.cls_logits.")]
        for k in reset:
            del state[k]
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"--init checkpoint '{path}' has another architecture than '{model_cfg.name}': "
                         f"{str(e).splitlines()[0]}") from e
    problems = [k for k in result.missing_keys if k not in reset] + list(result.unexpected_keys)
    if problems:
        raise ValueError(f"--init checkpoint '{path}' has another architecture than '{model_cfg.name}': keys "
                         f"{problems[:8]} do not match")
    if reset:
        log.warning("re-initialised the classification layer (%s): --init checkpoint '%s' has %d classes (%s), the "
                    "data %d (%s); every other weight comes from the checkpoint", ", ".join(reset), path, len(names),
                    ", ".join(names[:5]) + (", ..." if len(names) > 5 else ""), len(data_names),
                    ", ".join(data_names[:5]) + (", ..." if len(data_names) > 5 else ""))
    log.info("initialised %s weights from %s (iteration %s of that run)", "the other" if reset else "all", path,
             init.get("iteration"))
    return reset


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA where there is a GPU, else the CPU; anything else as torch names it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_memory(model: nn.Module, model_cfg: ModelConfig, train_cfg: TrainConfig, dataset: CocoBoxDataset,
                  info: DistInfo, device: torch.device, max_memory_gb: float | None) -> tuple[float, str]:
    """The memory guard (training/memory.py): raises MemoryError before the first step when a step
    would not fit; returns the estimate in GB and its line for the log."""
    batch = train_cfg.batch_size // info.world_size
    hw = largest_padded_hw(dataset.image_sizes(), train_cfg.min_sizes, train_cfg.max_size,
                           model_cfg.size_divisibility)
    instances = max(dataset.max_instances(), 1)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    estimate = estimate_step_memory(model_cfg, train_cfg.loss, batch, hw, instances, train_cfg.num_workers, params,
                                    trainable)
    flags = (f"--batch-size {train_cfg.batch_size}, --min-sizes {','.join(map(str, train_cfg.min_sizes))}, "
             f"--max-size {train_cfg.max_size}, --topk-proposals {train_cfg.loss.topk_proposals_per_image}")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    line = check_memory(estimate, max_memory_gb, local, flags, device)
    return (estimate.gpu_total if device.type == "cuda" else estimate.total) / 1e9, line


def _place(device: str) -> tuple[torch.device, DistInfo]:
    """This process's device and its place among torchrun's processes: joins the process group
    (if any) and, on CUDA, takes (and makes current) the GPU of LOCAL_RANK."""
    dev = resolve_device(device)
    info = init_distributed(dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    return dev, info


def _open_dataset(data_json: str, images_dir: str | None, train_cfg: TrainConfig) -> CocoBoxDataset:
    """The training set with the schedule's augmentation; raises ValueError when it has no images
    and FileNotFoundError when image files are missing."""
    dataset = CocoBoxDataset(data_json, images_dir, supervision=train_cfg.loss.supervision,
                             min_sizes=train_cfg.min_sizes, max_size=train_cfg.max_size,
                             flip_prob=train_cfg.flip_prob, mask_classes=train_cfg.loss.mask_classes)
    if len(dataset) == 0:
        raise ValueError(f"'{data_json}' has no images to train on")
    missing = dataset.missing_files()
    if missing:
        raise FileNotFoundError(f"{len(missing)} image file(s) of '{data_json}' not found, e.g. {missing[:3]} "
                                "(set --images to the image folder)")
    return dataset


def _build_model(model_cfg: ModelConfig, dev: torch.device, ckpt: dict | None, pretrained_backbone: str | None,
                 init_checkpoint: str | None, reset_classes: bool) -> nn.Module:
    """The model on `dev`, in train mode. Its weights: the resumed checkpoint's (`ckpt`), else a
    fresh initialisation with, when given, the backbone's pretrained weights and then those of
    `init_checkpoint` (see `_init_from`)."""
    model = build_model(model_cfg)
    if pretrained_backbone and ckpt is None:
        state = torch.load(pretrained_backbone, map_location="cpu", weights_only=True)
        missing = model.backbone.load_backbone_weights(state)
        log.info("loaded backbone weights from %s (%d missing keys)", pretrained_backbone, len(missing))
    if init_checkpoint and ckpt is None:
        _init_from(model, model_cfg, init_checkpoint, reset_classes)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    return model.to(dev).train()


def _data_parallel(model: nn.Module, dev: torch.device, info: DistInfo) -> nn.Module:
    """`model` wrapped in DistributedDataParallel with several processes; `model` itself with one."""
    if info.world_size <= 1:
        return model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=False)


def _build_loader(dataset: CocoBoxDataset, model_cfg: ModelConfig, train_cfg: TrainConfig, info: DistInfo,
                  start_iter: int) -> DataLoader:
    """This process's batches for iterations start_iter..iters-1 (IterationBatchSampler: the same
    batches whether resumed or not), each padded to the model's size divisibility. Raises
    ValueError when the batch size does not split evenly over the processes."""
    if train_cfg.batch_size % info.world_size:
        raise ValueError(f"batch size {train_cfg.batch_size} is not divisible by {info.world_size} processes")
    sampler = IterationBatchSampler(len(dataset), train_cfg.batch_size // info.world_size, train_cfg.iters,
                                    start_iter, train_cfg.seed, info.rank, info.world_size)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=train_cfg.num_workers, persistent_workers=False,
                      collate_fn=functools.partial(collate, size_divisibility=model_cfg.size_divisibility,
                                                   pad=pad_value(model_cfg)))


def _collapse_monitor(train_cfg: TrainConfig, ckpt: dict | None) -> CollapseMonitor:
    """A fresh collapse monitor, or the resumed run's (so it compares with the original start)."""
    monitor = CollapseMonitor(train_cfg.iters)
    if ckpt is not None and "collapse_monitor" in ckpt:
        monitor.load_state_dict(ckpt["collapse_monitor"])
    return monitor


@dataclass
class _TrainingRun:
    """What one training run works with once it is built: the model and what trains it, the
    configs in force (a resumed run's own), this process's place, and the output folder."""

    model: nn.Module
    ddp_model: nn.Module  # `model` itself on one process
    optimizer: torch.optim.SGD
    scaler: torch.amp.GradScaler
    use_amp: bool  # CUDA autocast (float16) and a live scaler
    monitor: CollapseMonitor
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    info: DistInfo
    dev: torch.device
    out: Path

    heal_state: HealState = field(default_factory=HealState.fresh)
    snapshot: Snapshot | None = None  # the last healthy window's model and optimizer (heal on)

    def save(self, iteration: int, name: str, with_optimizer: bool = True) -> None:
        """Checkpoint `out/name` on rank 0 (training/checkpoints.py: `last.pt` with the optimizer,
        `final.pt` without; both with the heals)."""
        if self.info.is_main:
            save_checkpoint(self.out / name, self.model, self.model_cfg, self.train_cfg, iteration,
                            self.optimizer if with_optimizer else None, self.monitor if with_optimizer else None,
                            self.heal_state)


@dataclass
class _LoopState:
    """The loop's running values: the next iteration, non-finite losses in a row, the collapse
    reasons of the last logging window ({} when it looked well) and when that window opened."""

    iteration: int
    t_last: float
    nonfinite: int = 0
    collapsed: dict[str, str] = field(default_factory=dict)


def _announce(run: _TrainingRun, dataset: CocoBoxDataset, data_json: str, start_iter: int, memory_gb: float,
              memory_line: str) -> None:
    """Rank 0's start of a run: `out/config.json` (written atomically) and the opening log lines."""
    model_cfg, train_cfg, info = run.model_cfg, run.train_cfg, run.info
    write_json_atomic(run.out / "config.json", {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
                                                "device": str(run.dev), "processes": info.world_size,
                                                "estimated_peak_memory_gb": round(memory_gb, 3)}, indent=2)
    log.info("training %s on %d images (%s), iterations %d..%d, on %s: batch %d (%d per process x %d), "
             "short side %s, long side <= %d, %d data worker(s) per process; test size %d/%d; %s",
             model_cfg.name, len(dataset), data_json, start_iter, train_cfg.iters, run.dev, train_cfg.batch_size,
             train_cfg.batch_size // info.world_size, info.world_size,
             "/".join(map(str, train_cfg.min_sizes)), train_cfg.max_size, train_cfg.num_workers,
             model_cfg.min_size_test, model_cfg.max_size_test, train_cfg.describe_lr())
    log.info("%s", memory_line)


def _forward_losses(run: _TrainingRun, batch: dict, iteration: int) -> tuple[dict[str, torch.Tensor], dict]:
    """The forward pass (under autocast with AMP) and the criterion: ({name: 0-d loss}, the mask
    statistics for the collapse monitor). Moves `batch["images"]` ([B, 3, H, W]) to the device."""
    images = batch["images"].to(run.dev, non_blocking=True)
    with torch.autocast(device_type=run.dev.type, dtype=torch.float16, enabled=run.use_amp):
        outputs = run.ddp_model(images)
    batch["images"] = images
    stats: dict = {}
    losses = compute_losses(outputs, batch, run.model_cfg, run.train_cfg.loss, iteration, stats=stats,
                            pairwise_from=run.heal_state.pairwise_from)
    return losses, stats


def _all_finite(loss: torch.Tensor, run: _TrainingRun) -> bool:
    """Whether the loss is finite on every process (so that all of them step, or none)."""
    finite = torch.tensor([float(torch.isfinite(loss))], device=run.dev)
    if run.info.world_size > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return finite.item() >= 1


def _optimizer_step(run: _TrainingRun, loss: torch.Tensor) -> None:
    """Backward (scaled with AMP), gradient clipping when configured, and the SGD step."""
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.train_cfg.clip_grad_norm > 0:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), run.train_cfg.clip_grad_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()


def _step(run: _TrainingRun, batch: dict, state: _LoopState) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Iteration `state.iteration`: the scheduled learning rate, losses and, when the loss is
    finite everywhere, the step; returns ({name: 0-d loss}, their sum). A non-finite loss skips the
    step; `max_nonfinite` of them in a row raise RuntimeError (training diverged)."""
    train_cfg = run.train_cfg
    for g in run.optimizer.param_groups:
        g["lr"] = train_cfg.lr * train_cfg.lr_factor(state.iteration) * g.get("lr_scale", 1.0)
    losses, stats = _forward_losses(run, batch, state.iteration)
    loss = sum(losses.values())
    if not _all_finite(loss, run):
        state.nonfinite += 1
        log.warning("iteration %d: non-finite loss (%s), step skipped (%d in a row)", state.iteration,
                    {k: float(v.detach()) for k, v in losses.items()}, state.nonfinite)
        run.optimizer.zero_grad(set_to_none=True)
        if state.nonfinite >= train_cfg.max_nonfinite:
            raise RuntimeError(f"{state.nonfinite} non-finite losses in a row at iteration {state.iteration}: "
                               "training diverged (lower --lr, or check the data)")
    else:
        state.nonfinite = 0
        _optimizer_step(run, loss)
        run.monitor.update(losses["loss_prj"].detach() if "loss_prj" in losses else 0.0, stats)
    return losses, loss


def _log_window(run: _TrainingRun, state: _LoopState, losses: dict[str, torch.Tensor], loss: torch.Tensor,
                bar: tqdm) -> None:
    """Close the logging window that ends at `state.iteration`: one line of `out/metrics.jsonl` on
    rank 0 ({"iteration", "lr", "loss", each loss term, "s_per_iter", "peak_rss_gb", and the
    collapse monitor's window}), a warning when the collapse reasons change, the bar's loss."""
    now = time.perf_counter()
    record = {"iteration": state.iteration, "lr": run.optimizer.param_groups[0]["lr"],
              "loss": loss.item(), **{k: v.item() for k, v in losses.items()},
              "s_per_iter": (now - state.t_last) / run.train_cfg.log_period,
              "peak_rss_gb": round(peak_resident_bytes() / 1e9, 3), **run.monitor.window(state.iteration)}
    state.t_last = now
    reasons = record.get("collapse", {})
    if reasons and run.info.is_main and reasons.keys() != state.collapsed.keys():
        log.warning("%s", collapse_summary(reasons, state.iteration))
    state.collapsed = reasons
    if _agreed_to_heal(run, reasons, state.iteration):
        done = heal(run.model, functools.partial(build_model, run.model_cfg), run.optimizer, run.monitor,
                    run.heal_state, reasons, state.iteration, run.train_cfg.heal_lr_scale, run.train_cfg.seed,
                    run.snapshot)
        record["heal"] = done.to_dict()
        state.collapsed = {}
        if run.info.is_main:
            log.warning("iteration %d: healing the mask head (%d of at most %d): back to iteration %s%s, the mask "
                        "side's step x%g, the pairwise warm-up started again (training/heal.py; --no-heal only warns)",
                        state.iteration, len(run.heal_state.heals), run.train_cfg.max_heals, done.rolled_back_to,
                        " with the controller and mask branch re-initialised" if done.reinitialised else "",
                        done.mask_lr_scale)
    elif run.train_cfg.heal and _rank0_decides(run, looks_healthy(record)):
        run.snapshot = Snapshot.take(run.model, run.optimizer, state.iteration)
    bar.set_postfix(loss=f"{record['loss']:.3f}")
    if run.info.is_main:
        _append_jsonl(run.out / "metrics.jsonl", record)


def _agreed_to_heal(run: _TrainingRun, reasons: dict[str, str], iteration: int) -> bool:
    """Whether to heal now (training/heal.py, should_heal), as rank 0 decides from its window."""
    cfg = run.train_cfg
    return _rank0_decides(run, should_heal(reasons, iteration, cfg.iters, len(run.heal_state.heals), cfg.max_heals,
                                           cfg.heal))


def _rank0_decides(run: _TrainingRun, flag: bool) -> bool:
    """Rank 0's `flag` on every process (each judges its own window): every process heals, or
    keeps a snapshot, together or none does."""
    decision = [bool(flag)]
    if run.info.world_size > 1:
        dist.broadcast_object_list(decision, src=0)
    return decision[0]


def _train_loop(run: _TrainingRun, loader: DataLoader, start_iter: int, bar: tqdm) -> _LoopState:
    """The iterations start_iter..iters-1, with the logging windows and periodic `last.pt`;
    returns the final state. SIGINT/SIGTERM stop at the next iteration boundary: `last.pt` is
    saved there and KeyboardInterrupt raised."""
    train_cfg = run.train_cfg
    state = _LoopState(iteration=start_iter, t_last=time.perf_counter())
    stop = _GracefulStop()
    restore_signals = stop.install()
    try:
        for batch in loader:
            losses, loss = _step(run, batch, state)
            state.iteration += 1
            bar.update(1)
            if state.iteration % train_cfg.log_period == 0 or state.iteration == train_cfg.iters:
                _log_window(run, state, losses, loss, bar)
            if state.iteration % train_cfg.checkpoint_period == 0 and state.iteration < train_cfg.iters:
                run.save(state.iteration, LAST)
            if stop.requested and state.iteration < train_cfg.iters:
                # Between iterations the state is consistent: save it, then stop.
                run.save(state.iteration, LAST)
                log.warning("stopped at iteration %d; saved %s (continue with --resume)", state.iteration,
                            run.out / LAST)
                raise KeyboardInterrupt
    finally:
        restore_signals()
    return state


def _log_end(collapsed: dict[str, str], heals: list[dict]) -> None:
    """Rank 0's closing lines: the heals, a mask head that still looks collapsed, the peak memory."""
    if heals:
        log.warning("%s", describe_heals(heals))
    if collapsed:
        log.warning("training ended with a mask head that does not look like it learned: %s", "; ".join(collapsed.values()))
    log.info("peak resident memory of the training process: %.2f GB", peak_resident_bytes() / 1e9)


def _check_replicas(run: _TrainingRun, iteration: int) -> None:
    """With several processes: record every replica's parameter checksum in metrics.jsonl
    ({"iteration", "replica_checksums", "replicas_identical"}), leave the process group, and raise
    RuntimeError when the replicas diverged."""
    info = run.info
    sums = [None] * info.world_size
    dist.all_gather_object(sums, parameter_checksum(run.model))
    identical = all(s == sums[0] for s in sums)
    if info.is_main:
        _append_jsonl(run.out / "metrics.jsonl", {"iteration": iteration, "replica_checksums": sums,
                                                   "replicas_identical": identical})
    dist.barrier()
    dist.destroy_process_group()
    if not identical:
        raise RuntimeError(f"data-parallel replicas diverged: checksums {sums}")


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data_json: str, out_dir: str,
          images_dir: str | None = None, resume: bool = False, device: str = "auto",
          pretrained_backbone: str | None = None, init_checkpoint: str | None = None,
          progress: bool = True, max_memory_gb: float | None = None, reset_classes: bool = False) -> Path:
    """Train and return the path of the final checkpoint (`out_dir/final.pt`).

    `init_checkpoint`: start from the weights of another checkpoint (same architecture; its
    classification layer re-initialised when the data has other classes, see `_init_from`) with a
    fresh schedule and optimizer; ignored when resuming (the resumed run already holds them).
    Before the first step the memory guard estimates the peak memory of a step and raises
    MemoryError if it exceeds `max_memory_gb` or what the machine has."""
    dev, info = _place(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(train_cfg.seed)
    dataset = _open_dataset(data_json, images_dir, train_cfg)
    model_cfg = model_cfg.replace(num_classes=len(dataset.class_names), class_names=list(dataset.class_names))
    ckpt = load_for_resume(out) if resume else None
    if ckpt is not None:  # a resumed run goes on with its own configs, from where it stopped
        model_cfg, train_cfg = ckpt["model_config"], TrainConfig.from_dict(ckpt["train_config"])
    start_iter = int(ckpt["iteration"]) if ckpt is not None else 0

    model = _build_model(model_cfg, dev, ckpt, pretrained_backbone, init_checkpoint, reset_classes)
    optimizer = build_optimizer(model, train_cfg)
    if ckpt is not None:
        load_optimizer_state(optimizer, ckpt["optimizer"], out / LAST)
    ddp_model = _data_parallel(model, dev, info)
    loader = _build_loader(dataset, model_cfg, train_cfg, info, start_iter)
    memory_gb, memory_line = _check_memory(model, model_cfg, train_cfg, dataset, info, dev, max_memory_gb)
    use_amp = train_cfg.amp and dev.type == "cuda"
    run = _TrainingRun(model, ddp_model, optimizer, torch.amp.GradScaler("cuda", enabled=use_amp), use_amp,
                       _collapse_monitor(train_cfg, ckpt), model_cfg, train_cfg, info, dev, out,
                       HealState.from_state_dict(ckpt.get("heal_state") if ckpt is not None else None))
    if train_cfg.heal:  # what a heal goes back to until a healthy window: a run from scratch redraws its mask side,
        # one from --init or --resume keeps the weights it started from (an imported mask head is not thrown away)
        run.snapshot = Snapshot.take(model, optimizer, start_iter, initial=ckpt is None and init_checkpoint is None)

    if info.is_main:
        _announce(run, dataset, data_json, start_iter, memory_gb, memory_line)
    bar = tqdm(total=train_cfg.iters, initial=start_iter, disable=not (progress and info.is_main),
               desc="train", dynamic_ncols=True)
    state = _train_loop(run, loader, start_iter, bar)
    bar.close()
    if info.is_main:
        _log_end(state.collapsed, run.heal_state.heals)

    run.save(state.iteration, LAST)
    run.save(state.iteration, FINAL, with_optimizer=False)
    if info.world_size > 1:
        _check_replicas(run, state.iteration)
    return out / FINAL
