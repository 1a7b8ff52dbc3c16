"""The bounded queue and the deadline of a served repository: Triton's queue policy
(`dynamic_batching { default_queue_policy { ... } }`) on every model that queues requests
(docs/deployment.md, "Bounded queue and deadlines").

Past capacity, an unbounded queue makes every request wait (measured at concurrency 32: p50 2.4 s,
p99 3.3 s); a robot would rather get a fast refusal than a mask from 3 s ago. With a bound, Triton
refuses a request that finds the queue full at once (gRPC UNAVAILABLE "Exceeds maximum queue
size"), and one that waited past its deadline when its turn comes (UNAVAILABLE "Request timeout
expired"); the client maps both (boxinst_serve.client: ServerBusy, BoxInstTimeout).

Which models: an ensemble has no queue of its own (it hands each request to its steps, and a step's
refusal fails the ensemble's request: "in ensemble 'boxinst', ... Exceeds maximum queue size",
measured with Triton 2.51), so the policy goes on every step and on the one-process model. The
defaults are here once; `boxinst export --triton` writes them and `boxinst serve` may change them."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from boxinst_serve.protocol import (FUSED_RAW_MODEL, NET_MODEL, POSTPROCESS_MODEL, PREPROCESS_MODEL,
                                    PREPROCESS_RAW_MODEL)

# The models with a dynamic batcher, hence a queue: the ensembles' steps and the one-process model.
QUEUED_MODELS = (PREPROCESS_MODEL, PREPROCESS_RAW_MODEL, NET_MODEL, POSTPROCESS_MODEL, FUSED_RAW_MODEL)
# A request accepted at capacity waits for the requests ahead of it: with Q queued per instance, at
# most Q service times plus the one running, so past capacity every accepted request waits about
# the same, p99 near p50, within (Q + 1) service times of an idle server's, where an unbounded
# queue grows with the load. Q = 8 is one full batch of the network (export's max_batch_size) and
# what this project's batch clients keep in flight (BoxInstClient's 8 workers, `boxinst video
# --batch-size 8`): fewer would refuse their own batches (measured: 8 clients at once got ServerBusy
# with 2); more buys no throughput (the instances are busy anyway), only waiting.
QUEUE_PER_INSTANCE = 8
# The server's deadline for a request that gives none (the client's default timeout_s, 10 s: an
# answer the client no longer waits for is not worth computing). Triton takes a request's own
# deadline only when it is shorter than this one and ignores it where this is 0 (measured with
# 2.51), so 0 turns clients' deadlines off too.
QUEUE_TIMEOUT_MS = 10_000

_POLICY = re.compile(r"\s*default_queue_policy\s*\{[^{}]*\}")
_BATCHER = re.compile(r"dynamic_batching\s*\{")
_INSTANCES = re.compile(r"instance_group\s*\[\s*\{[^}]*count:\s*(\d+)")


@dataclass(frozen=True)
class QueuePolicy:
    """per_instance: requests a model may hold waiting, per instance of it (Triton's max_queue_size
    is per model: per_instance x its instance count; 0: unbounded). timeout_ms: the longest a
    request may wait in a queue before it is refused (0: no limit, and clients' deadlines are ignored)."""

    per_instance: int = QUEUE_PER_INSTANCE
    timeout_ms: int = QUEUE_TIMEOUT_MS

    def __post_init__(self):
        if self.per_instance < 0 or self.timeout_ms < 0:
            raise ValueError(f"the queue per instance and its timeout must be >= 0, got {self.per_instance} and "
                             f"{self.timeout_ms} ms")

    def text(self, instances: int = 1) -> str:
        """Triton's `default_queue_policy { ... }` for a model with `instances` instances."""
        return (f"default_queue_policy {{ max_queue_size: {self.per_instance * instances} timeout_action: REJECT "
                f"default_timeout_microseconds: {self.timeout_ms * 1000} allow_timeout_override: true }}")


def instance_count(config_text: str) -> int:
    """The instance count of a config.pbtxt (1 where it gives none)."""
    m = _INSTANCES.search(config_text)
    return int(m.group(1)) if m else 1


def without_queue_policy(config_text: str) -> str:
    """config.pbtxt text with its default_queue_policy removed (what the export compares)."""
    return _POLICY.sub("", config_text)


def with_queue_policy(config_text: str, policy: QueuePolicy) -> str:
    """config.pbtxt text with `policy` as the default_queue_policy of its dynamic batcher (replacing
    any there); ValueError for a config without a dynamic batcher."""
    text = without_queue_policy(config_text)
    m = _BATCHER.search(text)
    if m is None:
        raise ValueError("the config has no dynamic_batching { } block to hold a queue policy")
    return f"{text[:m.end()]} {policy.text(instance_count(text))}{text[m.end():]}"


def queue_policy_of(config_text: str) -> QueuePolicy | None:
    """The QueuePolicy a config.pbtxt holds (None without one)."""
    m = _POLICY.search(config_text)
    if m is None:
        return None
    size = re.search(r"max_queue_size:\s*(\d+)", m.group(0))
    timeout = re.search(r"default_timeout_microseconds:\s*(\d+)", m.group(0))
    per_instance = int(size.group(1)) // instance_count(config_text) if size else 0
    return QueuePolicy(per_instance, int(timeout.group(1)) // 1000 if timeout else 0)


def apply_queue_policy(repository: str | os.PathLike, policy: QueuePolicy) -> list[str]:
    """Write `policy` into the config.pbtxt of every queued model the repository has (QUEUED_MODELS);
    the rest of each file is kept. Returns the models changed."""
    changed = []
    for name in QUEUED_MODELS:
        path = Path(repository) / name / "config.pbtxt"
        if not path.is_file():
            continue
        old = path.read_text()
        try:
            new = with_queue_policy(old, policy)
        except ValueError as e:
            raise ValueError(f"'{path}': {e}: it was written before queues were bounded, export the model again "
                             "(`boxinst export --checkpoint CKPT --triton REPOSITORY`)") from None
        if new != old:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(new)
            os.replace(tmp, path)
            changed.append(name)
    return changed


def repository_queue_policy(repository: str | os.PathLike) -> QueuePolicy | None:
    """The policy of a repository's boxinst_net (None where it has none, or no boxinst_net)."""
    path = Path(repository) / NET_MODEL / "config.pbtxt"
    return queue_policy_of(path.read_text()) if path.is_file() else None
