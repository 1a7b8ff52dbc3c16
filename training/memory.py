"""The memory guard: the peak memory of a training step, estimated before the first step.

How the estimate is made. A probe runs one forward pass and the full loss of a fresh model on one
256x256 image holding as many boxes as the data's most crowded image, and counts the bytes of
every tensor autograd keeps for the backward pass (`torch.autograd.graph.saved_tensors_hooks`).
Those bytes grow with the image's pixel count: every feature map does, and so does every
per-instance mask-loss map (the instance count is fixed by the probe's boxes). Scaled to the
largest padded image a batch can hold and multiplied by the per-process batch, they are the
activations of a step; the backward pass holds gradients of about the same tensors for a while,
hence `BACKWARD_FACTOR`. Added: the gradients and SGD momentum of the trainable parameters, what
the process already holds (the model, the dataset index, torch itself) and the images the data
workers prefetch. The estimate is compared with the memory the machine can give (MemAvailable,
a cgroup limit if tighter) or `--max-memory`, before anything is trained.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from boxinst_serve.config import ModelConfig, padded_size
from training.config import LossConfig

PROBE_SIZE = 256
# Calibrated on the growth of resident memory in the first steps (lite at 256/512/800 px, batch 2
# and 4; r50_fpn at 384 px): 0.26 GB plus 1.86x the saved bytes, both rounded up here. Checked on
# steady-state peaks (100-300 iterations of each setting, docs/benchmarks.md, "Training"): the
# estimate is 9-14% above every one of them.
# The backward pass frees saved tensors as it goes but holds their gradients meanwhile.
BACKWARD_FACTOR = 2.0
# The first step's fixed cost: the kernels' workspaces and what the allocator keeps.
STEP_OVERHEAD_BYTES = 500 * 2**20
# What a data-loading process holds beyond the images it prefetches (its own Python heap and
# the pages it copies from the parent).
WORKER_OVERHEAD_BYTES = 300 * 2**20
PREFETCH_BATCHES = 2  # torch DataLoader's prefetch_factor

GB = 1e9


@dataclass
class MemoryEstimate:
    """Peak memory of one training process, in bytes, by part."""

    activations: int  # saved-for-backward tensors of the largest batch, times BACKWARD_FACTOR
    optimizer: int  # gradients + momentum of the trainable parameters
    process: int  # resident memory of the process when the estimate was made, plus STEP_OVERHEAD_BYTES
    loaders: int  # data-loading workers
    parameters: int  # all parameters (inside `process` on a CPU; on the GPU when training on CUDA)
    batch_per_process: int
    padded_hw: tuple[int, int]
    instances_per_image: int

    @property
    def total(self) -> int:
        """Peak resident memory of a process that trains on the CPU."""
        return self.activations + self.optimizer + self.process + self.loaders

    @property
    def gpu_total(self) -> int:
        """Peak GPU memory of a process that trains on CUDA (fp32 activations: AMP needs less)."""
        return self.activations + self.optimizer + self.parameters + STEP_OVERHEAD_BYTES

    def describe(self) -> str:
        return (f"{self.total / GB:.1f} GB (activations {self.activations / GB:.1f} GB for {self.batch_per_process} "
                f"image(s) of up to {self.padded_hw[0]}x{self.padded_hw[1]} px with up to {self.instances_per_image} "
                f"mask-loss instances each, gradients and momentum {self.optimizer / GB:.1f} GB, process "
                f"{self.process / GB:.1f} GB, data workers {self.loaders / GB:.1f} GB)")


def grid_boxes(height: int, width: int, count: int) -> torch.Tensor:
    """`count` boxes [count, 4] (x0, y0, x1, y1) on a near-square grid covering the image, each
    3/4 of its cell: every box gets foreground locations of its own."""
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    cw, ch = width / cols, height / rows
    boxes = [[(i % cols) * cw + cw / 8, (i // cols) * ch + ch / 8, (i % cols + 1) * cw - cw / 8,
              (i // cols + 1) * ch - ch / 8] for i in range(count)]
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def saved_tensor_bytes(cfg: ModelConfig, loss_cfg: LossConfig, height: int, width: int, num_boxes: int) -> int:
    """Bytes autograd saves for backward in one training step of a fresh `cfg` model on one
    uint8 image [1, height, width, 3] with `num_boxes` boxes (parameters not counted). Leaves the
    global RNG as it was (the model's initialisation draws from it)."""
    from boxinst_serve.model import build_model
    from training.criterion import compute_losses

    if loss_cfg.supervision == "mixed":  # probed with its box losses, the costlier kind
        loss_cfg = dataclasses.replace(loss_cfg, supervision="box", mask_classes=())
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg).train()
    images = torch.randint(0, 256, (1, height, width, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    boxes = grid_boxes(height, width, max(num_boxes, 1))
    n = boxes.shape[0]
    masks, has_mask = None, torch.zeros(n, dtype=torch.bool)
    if loss_cfg.supervision == "mask":
        from training.losses import boxes_to_bitmasks

        masks = boxes_to_bitmasks(boxes, height, width, stride=1).squeeze(1).to(torch.uint8)
        has_mask = torch.ones(n, dtype=torch.bool)
    batch = {"images": images, "image_sizes": torch.tensor([[height, width]]),
             "targets": [{"boxes": boxes, "labels": torch.zeros(n, dtype=torch.int64), "masks": masks,
                          "has_mask": has_mask}],
             "image_ids": [0], "orig_sizes": [(height, width)], "scales": [1.0]}
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = model(images)
        # an iteration past the pairwise warm-up: the pairwise term is computed in full
        sum(compute_losses(outputs, batch, cfg, loss_cfg, iteration=2**30).values())
    return sum(saved.values())


def largest_padded_hw(image_hws: list[tuple[int, int]], min_sizes: tuple[int, ...], max_size: int,
                      divisibility: int) -> tuple[int, int]:
    """The largest padded batch the data can make: the tallest and the widest image at the
    largest training short side (a batch pads every image to its tallest and widest member)."""
    from boxinst_serve.config import resized_shape

    shapes = {resized_shape(h, w, max(min_sizes), max_size) for h, w in set(image_hws)} or {(max(min_sizes),) * 2}
    return (padded_size(max(h for h, _ in shapes), divisibility), padded_size(max(w for _, w in shapes), divisibility))


def resident_bytes() -> int:
    """Resident memory of this process now (Linux /proc; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_resident_bytes() -> int:
    """Peak resident memory of this process so far (getrusage; Linux reports kB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_bytes() -> tuple[int, str] | None:
    """(bytes this process could still get, where the figure comes from): MemAvailable, or the
    cgroup's limit minus its usage where that is tighter; None where neither can be read."""
    options = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                options.append((int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"))
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < 2**60:
            options.append((int(limit) - int(usage), f"the cgroup limit {int(limit) / GB:.1f} GB ({limit_file})"))
        break
    return min(options) if options else None


def estimate_step_memory(cfg: ModelConfig, loss_cfg: LossConfig, batch_per_process: int,
                         padded_hw: tuple[int, int], instances_per_image: int, num_workers: int,
                         parameter_bytes: int, trainable_parameter_bytes: int) -> MemoryEstimate:
    """The peak memory of one training process (see the module docstring). `instances_per_image`:
    the most boxes one training image has (the mask loss runs on at most
    max(topk_proposals_per_image, that) locations per image)."""
    process = resident_bytes()  # before the probe allocates anything
    probe_boxes = min(max(instances_per_image, 1), 400)
    per_pixel = saved_tensor_bytes(cfg, loss_cfg, PROBE_SIZE, PROBE_SIZE, probe_boxes) / PROBE_SIZE**2
    pixels = padded_hw[0] * padded_hw[1]
    activations = int(per_pixel * pixels * batch_per_process * BACKWARD_FACTOR)
    image_bytes = pixels * 3 * batch_per_process
    loaders = num_workers * (WORKER_OVERHEAD_BYTES + PREFETCH_BATCHES * image_bytes)
    return MemoryEstimate(activations=activations, optimizer=2 * trainable_parameter_bytes,
                          process=process + STEP_OVERHEAD_BYTES,
                          loaders=loaders, parameters=parameter_bytes, batch_per_process=batch_per_process, padded_hw=padded_hw,
                          instances_per_image=instances_per_image)


def check_memory(estimate: MemoryEstimate, max_memory_gb: float | None, processes_on_machine: int,
                 flags: str, device: torch.device | None = None) -> str:
    """Raise MemoryError naming the flags that lower the estimate when it exceeds `max_memory_gb`
    or this process's share of what the machine (the GPU, when `device` is a CUDA device) can
    give; else return a line that says it fits. `flags`: the current values of the flags that
    lower it, for the message."""
    need = estimate.gpu_total if device is not None and device.type == "cuda" else estimate.total
    if max_memory_gb is not None:
        limit, source = max_memory_gb * GB, f"--max-memory {max_memory_gb:g} GB"
    elif device is not None and device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        limit, source = free, f"free on {torch.cuda.get_device_name(device)} of {total / GB:.1f} GB"
    else:
        avail = available_bytes()
        if avail is None:
            return f"estimated peak memory {estimate.describe()}; the machine's free memory is unknown"
        limit = (avail[0] + estimate.process * processes_on_machine) / processes_on_machine
        source = f"{avail[1]}" + (f", shared by {processes_on_machine} processes" if processes_on_machine > 1 else "")
    what = estimate.describe() if need == estimate.total else f"{need / GB:.1f} GB of GPU memory"
    if need > limit:
        raise MemoryError(
            f"a training step would need about {what}, more than the {limit / GB:.1f} GB available "
            f"({source}). Lower --batch-size, the image sizes (--min-sizes/--max-size, or --min-size-test/"
            f"--max-size-test from which they derive) or --topk-proposals (now: {flags}), or set --max-memory GB if "
            "you know better")
    return f"estimated peak memory {what}, of {limit / GB:.1f} GB available ({source})"
