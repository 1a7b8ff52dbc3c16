"""`boxinst video SOURCES --out OUT --ray [ADDRESS]`: the videos, outputs and resume of the
single-process `boxinst video`, spread over the workers of a Ray cluster (Ray Core actors).

- Plan: the driver (this process) lists the videos and names their folders exactly as the
  single-process path does (boxinst_serve.apps.video.inputs) and drops those whose done.json exists.
  That is the resume that survives the driver, the head node or the whole cluster going away: it
  needs no Ray state.
- Workers: `workers` Ray actors, each with `num_gpus=gpus_per_worker` and
  `num_cpus=cpus_per_worker` (decode and writer threads; a .pt model's torch threads follow it, a
  .onnx model's ONNX Runtime threads are PredictorSpec.threads, by default ONNX Runtime's own, as
  in the single process, whose outputs they then equal byte for byte on one node). Each builds its predictor
  once (PredictorSpec: an engine loaded in the actor, or one client to a Triton server on its node)
  and runs boxinst_serve.apps.video.pipeline.process_video on one whole video per call. No frame crosses the
  object store: workers read the videos and write OUT/<video>/ themselves, so inputs, model and
  outputs must sit on storage that every node sees at the same absolute path.
- Exactly once: a worker process that dies mid-video (killed, out of memory, its node lost) is
  restarted by Ray (max_restarts=-1) and the driver gives the video back to that same actor, which
  resumes after the last complete line (video.recover_jsonl). Ray runs an actor's calls one at a
  time and starts its new process after the old one is gone; on top of that a worker holds an
  exclusive lock (flock on OUT/<video>/.writing.lock) while it writes a video, and waits for it
  (`lock_timeout_s`) before starting, so a writer that outlives its driver or its node's
  heartbeat (a driver killed and the command run again at once; a network split) is never joined
  by a second one. After `max_attempts` deaths on one video it is reported as failed (a file that
  crashes the decoder must not loop for ever); an actor that cannot be restarted is retired and
  its video goes to another worker.
- A bad video (not a video, undecodable, an inference error) is a failed report from
  process_video, never an exception: the other videos go on and the summary names it.
- The driver killed: Ray kills the actors it owns; the same command run again skips the finished
  videos and resumes the partial ones.
- Progress: a bar over videos and one over frames (frame counts read from the containers by the
  driver; workers add the frames they infer to a small counter actor), a line per finished video,
  and the run summary (video.VideoSummary.to_dict) with frames/s per worker.

Ray is imported only inside the functions that need it (the `cluster` extra).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from collections import deque
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from boxinst_serve.apps.video.pipeline import JSONL, BatchPredictor, VideoReport, VideoSummary, process_video
from boxinst_serve.apps.video.inputs import VideoTask, plan_videos

log = logging.getLogger(__name__)

# Called once inside each worker: -> (predict, close). Must be picklable (Ray ships it to the actors).
PredictorFactory = Callable[[], "tuple[BatchPredictor, Callable[[], None]]"]
LOCK = ".writing.lock"  # in OUT/<video>/, held (flock) by the worker writing that video


class VideoLocked(RuntimeError):
    """Another process is writing this video's folder."""


@contextmanager
def video_lock(out_dir: str | os.PathLike, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive flock on OUT_DIR/.writing.lock; wait up to timeout_s for another holder
    (its locks go when its process dies), else raise VideoLocked."""
    path = Path(out_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    if e.errno in (errno.EAGAIN, errno.EACCES):
                        raise VideoLocked(f"{path} stayed locked for {timeout_s:g} s: another process is writing "
                                          f"this video (a run still going?)") from None
                    raise
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class PredictorSpec:
    """What each worker builds once: an engine from `model` (.pt, .onnx, .xml or .plan, on `device`; `engine`) or a
    client to the Triton server at `url` (one per node: localhost:8001), `max_requests` frames in
    flight. Calling it (in the worker) returns (predict, close)."""
    model: str | None = None
    url: str | None = None
    device: str = "cpu"
    timeout_s: float = 30.0
    max_requests: int = 8
    threads: int = 0  # .onnx/.xml: the runtime's intra-op threads (0: its default, one per core of the node)
    engine: str = "auto"  # load_engine's engine: auto (by file type), onnxruntime or openvino
    client_kwargs: dict = field(default_factory=dict)  # --url: TLS and key (BoxInstClient's keywords)

    def __post_init__(self) -> None:
        if bool(self.model) == bool(self.url):
            raise ValueError("give exactly one of --model (an engine in each worker) or --url (a Triton server "
                             "that each worker reaches, e.g. one per node at localhost:8001)")

    def __call__(self) -> tuple[BatchPredictor, Callable[[], None]]:
        from boxinst_serve.apps.video.pipeline import client_batch_predictor, engine_batch_predictor

        if self.url:
            from boxinst_serve.client import BoxInstClient

            client = BoxInstClient(self.url, timeout_s=self.timeout_s, max_workers=self.max_requests,
                                   **self.client_kwargs)
            if not client.is_ready():
                client.close()
                raise RuntimeError(f"no ready boxinst model at {self.url} (start one with `boxinst serve` on "
                                   f"this node)")
            return client_batch_predictor(client), client.close
        from boxinst_serve.engines import load_engine

        kwargs = {"threads": self.threads} if self.threads and self.model.lower().endswith((".onnx", ".xml")) else {}
        engine = load_engine(self.model, device=self.device, engine=self.engine, **kwargs)
        return engine_batch_predictor(engine), lambda: None


@dataclass(frozen=True)
class RayConfig:
    """Where and how many workers.
    address: None starts a local Ray; "auto", "HOST:PORT" or "ray://HOST:PORT" joins a cluster."""
    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_attempts: int = 3  # worker deaths on one video before it is reported as failed
    start_timeout_s: float = 600.0  # for all workers to be up (engine loaded)
    lock_timeout_s: float = 120.0  # a worker waits this long for a video another process still writes

    def __post_init__(self) -> None:
        if self.workers < 1 or self.gpus_per_worker < 0 or self.cpus_per_worker < 0 or self.max_attempts < 1:
            raise ValueError(f"--workers and --max-attempts must be >= 1, --gpus-per-worker and --cpus-per-worker "
                             f">= 0; got {self.workers}, {self.max_attempts}, {self.gpus_per_worker}, "
                             f"{self.cpus_per_worker}")


# ---- the actors -----------------------------------------------------------------------------------
class FrameCounter:
    """Frames inferred so far, per worker (a Ray actor: workers add, the driver reads)."""

    def __init__(self) -> None:
        self.frames: dict[int, int] = {}

    def add(self, worker: int, n: int) -> None:
        self.frames[worker] = self.frames.get(worker, 0) + n

    def snapshot(self) -> dict[int, int]:
        return dict(self.frames)


class VideoWorker:
    """A Ray actor: builds the predictor once, then processes one whole video per `process` call."""

    def __init__(self, index: int, make_predictor: PredictorFactory, log_level: int) -> None:
        logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
        self.index = index
        self.predict, self._close = make_predictor()

    def info(self) -> dict[str, Any]:
        import ray

        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        return {"worker": self.index, "node": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "gpu_ids": list(gpus)}

    def process(self, task: VideoTask, options: dict[str, Any], counter: Any) -> dict[str, Any]:
        """One whole video -> its VideoReport as a dict; inferred frames are added to `counter`.
        (The counter comes with each call, not to __init__: constructor arguments that are object
        refs or handles could be gone when Ray restarts the actor.)"""
        def predict(frames):
            results = self.predict(frames)
            counter.add.remote(self.index, len(frames))
            return results

        options = dict(options)
        lock_timeout_s = options.pop("lock_timeout_s")
        out = Path(task.out_dir)
        try:
            with video_lock(out, lock_timeout_s):
                report = process_video(task.video, out, predict, progress=False, **options)
                if report.error and [p.name for p in out.iterdir()] == [LOCK]:  # not a video: no folder, as
                    (out / LOCK).unlink()                                       # the single-process path
                    out.rmdir()
        except VideoLocked as e:
            report = VideoReport(video=task.video, out_dir=task.out_dir, error=f"{task.video}: {e}")
        return report.to_dict()

    def close(self) -> None:
        self._close()


# ---- the driver -----------------------------------------------------------------------------------
def _report(d: dict[str, Any]) -> VideoReport:
    names = {f.name for f in fields(VideoReport)}
    return VideoReport(**{k: v for k, v in d.items() if k in names})


def _frames_to_do(task: VideoTask, every: int) -> int | None:
    """Frames left to infer: the container's count / every, less the lines already written (None:
    the container has no count, or the file is not a video)."""
    import cv2

    cap = cv2.VideoCapture(task.video)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
    cap.release()
    if n <= 0:
        return None
    jsonl = Path(task.out_dir) / JSONL
    kept = jsonl.read_bytes().count(b"\n") if jsonl.exists() else 0
    return max(0, math.ceil(n / every) - kept)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _connect(address: str | None) -> bool:
    """ray.init unless this process is already connected; True if it started (so must stop) Ray."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return True


def _check_resources(cfg: RayConfig) -> None:
    import ray

    have = ray.cluster_resources()
    for name, per in (("GPU", cfg.gpus_per_worker), ("CPU", cfg.cpus_per_worker)):
        need = cfg.workers * per
        if need > have.get(name, 0.0) + 1e-9:
            flag = "--gpus-per-worker" if name == "GPU" else "--cpus-per-worker"
            raise ValueError(f"--workers {cfg.workers} x {flag} {per:g} needs {need:g} {name}(s); the Ray cluster has "
                             f"{have.get(name, 0.0):g} (fewer workers, or a smaller {flag})")


def run_videos_on_ray(sources: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                      make_predictor: PredictorFactory, cfg: RayConfig = RayConfig(), batch_size: int = 8,
                      every: int = 1, overlay: bool = False, score_thresh: float = 0.3,
                      progress: bool = True) -> VideoSummary:
    """The videos of `sources` -> OUT_DIR/<video>/ (the files of the single-process path, byte for
    byte), processed by `cfg.workers` Ray actors. Returns the run's summary; failed videos are in it,
    never raised. Raises ValueError/RuntimeError when the cluster cannot run the workers."""
    if batch_size < 1 or every < 1:
        raise ValueError(f"batch_size and every must be >= 1, got {batch_size} and {every}")
    t0 = time.perf_counter()
    tasks = plan_videos(sources, out_dir)
    reports: dict[str, VideoReport] = {}
    pending: list[VideoTask] = []
    for task in tasks:
        if task.done:
            reports[task.video] = VideoReport(video=task.video, out_dir=task.out_dir, skipped=True, done=True)
        else:
            pending.append(task)
    summary = VideoSummary()
    if pending:
        options = {"batch_size": batch_size, "every": every, "overlay": overlay, "score_thresh": score_thresh,
                   "lock_timeout_s": cfg.lock_timeout_s}
        _Run(pending, make_predictor, cfg, options, progress, summary, reports, skipped=len(tasks) - len(pending)).go()
    elif progress:
        print(f"all {len(tasks)} video(s) already done: nothing to run", file=sys.stderr)
    summary.reports = [reports[t.video] for t in tasks if t.video in reports]
    summary.seconds = time.perf_counter() - t0
    return summary


@dataclass
class _Schedule:
    """Who runs what during one run (the driver's state; workers are indices into `_Run.actors`).
    A worker that cannot be restarted is retired: it simply never becomes idle again."""

    queue: deque[VideoTask]  # videos no worker has started
    idle: set[int]  # workers waiting for a video
    pinned: dict[int, VideoTask] = field(default_factory=dict)  # a video to redo on the worker that was running it
    attempts: dict[str, int] = field(default_factory=dict)  # video -> deaths of its worker while on it
    inflight: dict[Any, tuple[int, VideoTask]] = field(default_factory=dict)  # process() ref -> (worker, video)
    probing: dict[Any, int] = field(default_factory=dict)  # info() ref of a dead worker's restart -> worker

    def busy(self) -> bool:
        return bool(self.queue or self.pinned or self.inflight or self.probing)

    def unfinished(self) -> list[VideoTask]:
        """The videos started but not reported, waiting to be redone, then not started, in that order."""
        return [t for _, t in self.inflight.values()] + list(self.pinned.values()) + list(self.queue)


class _FrameProgress:
    """The frames bar: while the driver waits on the workers it asks the counter actor for the
    frames inferred so far, at most every 0.5 s and one request at a time (only with `enabled`)."""

    def __init__(self, counter: Any, total: int, enabled: bool) -> None:
        from tqdm import tqdm

        self.counter, self.enabled = counter, enabled
        self.bar = tqdm(total=total, desc="frames", unit="frame", disable=not enabled, position=1)
        self.ref, self.polled = None, 0.0

    def request(self) -> list[Any]:
        """The counter request to wait on along with the workers' ([] or [ref]); sent when due."""
        if self.enabled and self.ref is None and time.perf_counter() - self.polled > 0.5:
            self.ref, self.polled = self.counter.snapshot.remote(), time.perf_counter()
        return [self.ref] if self.ref else []

    def is_answer(self, ref: Any) -> bool:
        return ref == self.ref

    def show(self) -> None:
        """The answer has come: show it."""
        import ray

        self.bar.n = sum(ray.get(self.ref).values())
        self.bar.refresh()
        self.ref = None

    def soon(self) -> None:
        """Ask at the next wait (a video just finished: show its last frames now)."""
        self.polled = 0.0

    def close(self) -> None:
        """Show the final count, then close the bar."""
        import ray

        if self.enabled:
            self.bar.n = sum(ray.get(self.counter.snapshot.remote()).values())
            self.bar.refresh()
        self.bar.close()


class _Run:
    """One run's driver loop: start the workers, hand out videos, collect reports, retry on deaths."""

    def __init__(self, pending: list[VideoTask], make_predictor: PredictorFactory, cfg: RayConfig,
                 options: dict[str, Any], progress: bool, summary: VideoSummary, reports: dict[str, VideoReport],
                 skipped: int):
        self.tasks, self.make_predictor, self.cfg, self.options = pending, make_predictor, cfg, options
        self.progress, self.summary, self.reports, self.skipped = progress, summary, reports, skipped
        self.restart_deadline: dict[int, float] = {}  # worker -> monotonic time its restart may take until

    def line(self, text: str) -> None:
        """One line per finished (or retried) video, above the bars."""
        if self.progress:
            from tqdm import tqdm

            tqdm.write(text)

    def go(self) -> None:
        import ray

        t0 = time.perf_counter()
        started = _connect(self.cfg.address)
        self.summary.startup["ray_init_s"] = time.perf_counter() - t0
        try:
            _check_resources(self.cfg)
            self._start_workers()
            try:
                self._loop()
            finally:
                self._stop_workers()
        finally:
            if started:
                ray.shutdown()

    def _start_workers(self) -> None:
        import ray

        t0 = time.perf_counter()
        self.counter = ray.remote(num_cpus=0)(FrameCounter).remote()
        worker_cls = ray.remote(VideoWorker).options(num_cpus=self.cfg.cpus_per_worker,
                                                     num_gpus=self.cfg.gpus_per_worker,
                                                     max_restarts=-1, max_task_retries=0)
        level = logging.getLogger().getEffectiveLevel()
        self.actors = [worker_cls.remote(i, self.make_predictor, max(level, logging.WARNING))
                       for i in range(self.cfg.workers)]
        try:
            infos = ray.get([a.info.remote() for a in self.actors], timeout=self.cfg.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self._stop_workers()
            raise RuntimeError(f"the {self.cfg.workers} worker(s) were not all up after {self.cfg.start_timeout_s:g} s "
                               f"(cluster resources: {ray.cluster_resources()})") from None
        except ray.exceptions.RayError as e:
            self._stop_workers()
            raise RuntimeError(f"a worker could not start (building its predictor failed): {_short(e)}") from None
        self.stats = [{**info, "videos": 0, "frames": 0, "busy_s": 0.0, "restarts": 0} for info in infos]
        self.summary.startup["workers_start_s"] = time.perf_counter() - t0

    def _stop_workers(self) -> None:
        import ray

        for a in getattr(self, "actors", []):
            ray.kill(a, no_restart=True)
        if getattr(self, "counter", None) is not None:
            ray.kill(self.counter, no_restart=True)

    def _finish(self, task: VideoTask, report: VideoReport, worker: int | str) -> None:
        self.reports[task.video] = report
        self.video_bar.update(1)
        name = Path(task.video).name
        if report.error:
            self.line(f"failed   {name}: {report.error} (worker {worker})")
        elif report.interrupted:
            self.line(f"stopped  {name}: {report.frames_processed} frame(s) written (worker {worker})")
        else:
            resumed = "" if report.resumed_after_frame is None else f", resumed after frame {report.resumed_after_frame}"
            self.line(f"done     {name}: {report.frames_processed} frame(s) in {report.seconds:.1f} s "
                      f"({report.frames_per_s:.1f} frames/s{resumed}; worker {worker})")

    def _loop(self) -> None:
        """Hand the videos out to the idle workers and collect what comes back (reports, restarted
        workers, frame counts) until every video has a report. Ctrl-C marks the unfinished ones
        interrupted; the summary's processing time and per-worker figures are set in any case."""
        from tqdm import tqdm

        total_frames = sum(_frames_to_do(t, self.options["every"]) or 0 for t in self.tasks)
        self.video_bar = tqdm(total=len(self.tasks) + self.skipped, initial=self.skipped, desc="videos",
                              unit="video", disable=not self.progress, position=0)
        self.frames = _FrameProgress(self.counter, total_frames, self.progress)
        s = _Schedule(deque(self.tasks), idle=set(range(self.cfg.workers)))
        t0 = time.perf_counter()
        try:
            while s.busy():
                self._hand_out(s)
                if not s.inflight and not s.probing:  # every worker retired: nothing can run the rest
                    self._fail_unrunnable(s)
                    break
                for ref in self._wait(s):
                    if self.frames.is_answer(ref):
                        self.frames.show()
                    elif ref in s.probing:
                        self._on_restarted(ref, s)
                    else:
                        self._on_report(ref, s)
        except KeyboardInterrupt:
            for task in s.unfinished():
                self.reports[task.video] = VideoReport(video=task.video, out_dir=task.out_dir, interrupted=True)
            self.line("interrupted: the videos in progress keep their complete lines; run the same command again")
        finally:
            self._close_progress(t0)

    def _hand_out(self, s: _Schedule) -> None:
        """Each idle worker (lowest index first) gets its pinned video (a retry), else the next one
        in the queue, until there is none."""
        for w in sorted(s.idle):
            task = s.pinned.pop(w, None) or (s.queue.popleft() if s.queue else None)
            if task is None:
                break
            s.idle.discard(w)
            s.inflight[self.actors[w].process.remote(task, self.options, self.counter)] = (w, task)

    def _fail_unrunnable(self, s: _Schedule) -> None:
        """Every worker retired: the videos left are failed reports."""
        for task in list(s.queue) + list(s.pinned.values()):
            self._finish(task, VideoReport(video=task.video, out_dir=task.out_dir,
                                           error=f"{task.video}: no worker left to process it"), "-")

    def _wait(self, s: _Schedule) -> list[Any]:
        """The refs ready within 0.5 s (at most one): a report, a restarted worker, or frame counts."""
        import ray

        ready, _ = ray.wait(list(s.inflight) + list(s.probing) + self.frames.request(), num_returns=1, timeout=0.5)
        return ready

    def _on_restarted(self, ref: Any, s: _Schedule) -> None:
        """A dead worker's info() answered: it is back (idle again, its pinned video first), or it
        could not be restarted (retired; its pinned video goes back to the front of the queue)."""
        import ray

        w = s.probing.pop(ref)
        try:
            info = ray.get(ref)
            self.stats[w].update(node=info["node"], pid=info["pid"], gpu_ids=info["gpu_ids"])
            s.idle.add(w)
        except ray.exceptions.ActorUnavailableError:
            # Still restarting (a loaded machine takes seconds to start its new process): ask again,
            # until --start-timeout after its death, then retire it as below.
            if time.monotonic() < self.restart_deadline.get(w, 0.0):
                time.sleep(0.2)
                s.probing[self.actors[w].info.remote()] = w
            else:
                self._retire(w, s, f"not back {self.cfg.start_timeout_s:g} s after its death")
        except ray.exceptions.RayActorError as e:
            self._retire(w, s, _short(e))

    def _retire(self, w: int, s: _Schedule, why: str) -> None:
        """Worker `w` could not be restarted: it never becomes idle again; its pinned video goes back
        to the front of the queue."""
        self.line(f"worker {w} retired: it could not be restarted ({why})")
        if w in s.pinned:
            s.queue.appendleft(s.pinned.pop(w))

    def _on_report(self, ref: Any, s: _Schedule) -> None:
        """A process() call returned: the video's report (an exception in the call is a failed
        report), counted in the worker's figures; or its worker died (`_on_worker_death`)."""
        import ray

        w, task = s.inflight.pop(ref)
        try:
            report = _report(ray.get(ref))
        except ray.exceptions.RayActorError as e:
            self._on_worker_death(w, task, e, s)
            return
        except ray.exceptions.RayTaskError as e:  # process_video reports video errors itself
            report = VideoReport(video=task.video, out_dir=task.out_dir, error=f"{task.video}: {_short(e)}")
        self.stats[w]["videos"] += 1
        self.stats[w]["frames"] += report.frames_processed
        self.stats[w]["busy_s"] += report.seconds
        self._finish(task, report, w)
        s.idle.add(w)
        self.frames.soon()

    def _on_worker_death(self, w: int, task: VideoTask, e: BaseException, s: _Schedule) -> None:
        """Worker `w` died on `task`: the video is pinned to it for another attempt (resuming after
        its last line) or, after `max_attempts` deaths, reported failed; either way the driver asks
        the restarted actor for its info (`probing`)."""
        n = s.attempts[task.video] = s.attempts.get(task.video, 0) + 1
        self.stats[w]["restarts"] += 1
        if n >= self.cfg.max_attempts:
            self._finish(task, VideoReport(
                video=task.video, out_dir=task.out_dir,
                error=f"{task.video}: its worker died {n} time(s) while processing it ({_short(e)})"), w)
        else:
            s.pinned[w] = task
            self.line(f"retry    {Path(task.video).name}: worker {w} died ({_short(e)}); "
                      f"attempt {n + 1} of {self.cfg.max_attempts} resumes after its last line")
        self.restart_deadline[w] = time.monotonic() + self.cfg.start_timeout_s
        s.probing[self.actors[w].info.remote()] = w

    def _close_progress(self, t0: float) -> None:
        """The summary's processing time and per-worker figures (frames/s), and the bars closed."""
        self.summary.processing_s = time.perf_counter() - t0
        self.frames.close()
        self.video_bar.close()
        for s in self.stats:
            s["frames_per_s"] = s["frames"] / s["busy_s"] if s["busy_s"] else 0.0
        self.summary.workers = self.stats
