"""`boxinst video`: segment every (or every N-th) frame of video files, folders of videos or a
camera, with an in-process engine or through a server (`--url`).

Pipeline per video: a decoder thread (cv2.VideoCapture) -> bounded queue -> inference in the
calling thread (frames batched into one engine call, or sent concurrently to the server) ->
bounded queue -> a writer thread (JSON lines, overlay video). Decoding and encoding run while the
engine works, so the engine does not wait on them.

Inputs: files, folders, globs and list files, planned by boxinst_serve.apps.video.inputs (which also
names the output folders); the Ray path (boxinst_serve.apps.video.ray) uses the same plan.

Output per video, in OUT/<video stem>/:

- `instances.jsonl`: one JSON line per processed frame, in frame order:
  {"frame": i, "timestamp_s": t, "instances": [{"box": [x0, y0, x1, y1], "score": s, "class": c,
  "class_name": name, "rle": {"size": [h, w], "counts": str}}]}. Every detection the model returns
  is written; `score_thresh` only selects what is drawn and counted in the summary.
- `overlay.mp4` (with `overlay=True`): the processed frames with masks drawn (mp4v).
- `done.json`, written atomically when the whole video has been processed: what the output holds,
  {"video", "every", "frames" (lines in instances.jsonl), "last_frame", "frames_failed"
  (frames up to the last one with no line: undecodable), "done": true}. It describes the output,
  not the run that made it (no times, no resume point), so a video processed in one go, resumed
  after a kill, or processed by a Ray worker gets the same bytes. The run's figures (seconds,
  frames/s, resumed_after_frame) are in the run summary (`boxinst video --summary`, default
  OUT/summary.json).

Resuming (files only; a camera starts afresh and overwrites its folder): a video with `done.json`
is skipped (delete its folder to redo it). Otherwise, if `instances.jsonl` exists, its complete
lines are kept: the file is cut after the last line that ends with a newline, parses as JSON and
has a frame index larger than the line before; anything after it (a line cut by a kill) is
truncated away. Decoding then skips every frame up to the last kept frame index and appends, so a
run killed at any point and restarted gives every frame exactly once, in order. Each line is one
`write` followed by a flush, and the file is fsync'ed after every batch.

The overlay cannot be appended to (an mp4 killed before `release` is unplayable). It is written
to `overlay.writing.mp4` and renamed to `overlay.mp4` when the run ends (finished or stopped with
Ctrl-C). On resume with `overlay=True` the overlay is rebuilt from frame 0: frames already in
`instances.jsonl` are decoded again and drawn from their stored results (no inference), so
`overlay.mp4` always shows every processed frame (a leftover `overlay.writing.mp4` of a killed run
is replaced). A resumed run without `overlay` leaves an earlier `overlay.mp4` as it was: it then
covers only the frames of the run that wrote it.

Decode failures: `cv2.VideoCapture.read` returns False both at the end of a file and for a frame
it cannot decode. Where the container reports a frame count, False before that count is a failed
frame (logged, counted, skipped) and decoding goes on; after `MAX_CONSECUTIVE_FAILURES` failures
in a row the video is given up (reported as failed, no `done.json`). Failures that run up to the
reported count are taken as the end of a stream whose container over-reports its length (warned,
not counted). Without a frame count, False is the end. A file that cannot be opened or yields no
frame is reported by name; the other videos are still processed.
"""
from __future__ import annotations

import json
import logging
import math
import os
import queue
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from boxinst_serve.files import write_json_atomic
from boxinst_serve.predictor import Predictor
from boxinst_serve.results import Instances
from boxinst_serve.apps.video.inputs import DONE, VIDEO_SUFFIXES, collect_video_files, plan_videos
from boxinst_serve.visualize import draw_instances

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 10
QUEUE_BATCHES = 2  # bounded queues hold this many batches of frames
JSONL, OVERLAY, OVERLAY_TMP = "instances.jsonl", "overlay.mp4", "overlay.writing.mp4"
# DONE and VIDEO_SUFFIXES are imported from boxinst_serve.apps.video.inputs (their one definition)

# RGB frames -> their Instances (same order)
BatchPredictor = Callable[[list[np.ndarray]], list[Instances]]


class VideoError(RuntimeError):
    """A video that cannot be processed (not a video, no frames, too many decode failures)."""


# ---- predictors -------------------------------------------------------------------------------
def engine_batch_predictor(engine) -> BatchPredictor:
    """All frames of a batch in one engine call (the Predictor pads them to one size)."""
    return Predictor(engine).predict_batch


def client_batch_predictor(client) -> BatchPredictor:
    """The batch's frames sent concurrently (BoxInstClient.segment_batch; raw uint8 frames)."""

    def predict(frames: list[np.ndarray]) -> list[Instances]:
        return client.segment_batch(frames)

    return predict


# ---- inputs -----------------------------------------------------------------------------------
def camera_index(text: str | os.PathLike) -> int | None:
    """'0' -> 0 (a camera), anything else -> None."""
    s = str(text).strip()
    return int(s) if s.isdigit() and not Path(s).exists() else None


def collect_videos(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Files, folders (their videos, sorted), globs, list files -> absolute paths (video_inputs)."""
    return collect_video_files(source)


# ---- resume -----------------------------------------------------------------------------------
def recover_jsonl(path: Path) -> list[int]:
    """Frame indices of the complete lines of `path`; truncates the file after the last one."""
    if not path.exists():
        return []
    data = path.read_bytes()
    frames: list[int] = []
    good = 0
    while True:
        nl = data.find(b"\n", good)
        if nl < 0:
            break
        try:
            rec = json.loads(data[good:nl])
            frame = int(rec["frame"])
        except (ValueError, KeyError, TypeError):
            break
        if frames and frame <= frames[-1]:
            break
        frames.append(frame)
        good = nl + 1
    if good < len(data):
        log.warning("%s: dropping %d byte(s) after the last complete line (frame %s)", path, len(data) - good,
                    frames[-1] if frames else "none")
        os.truncate(path, good)
    return frames


class _Records:
    """The stored lines of a jsonl file, read lazily in order (for rebuilding the overlay)."""

    def __init__(self, path: Path | None):
        self._f = open(path, "rb") if path is not None else None

    def take(self, frame: int) -> dict[str, Any]:
        """The record of `frame`, skipping earlier ones (frames that failed to decode this time)."""
        while self._f is not None:
            line = self._f.readline()
            if not line:
                break
            rec = json.loads(line)
            if rec["frame"] == frame:
                return rec
            if rec["frame"] > frame:
                break
        raise RuntimeError(f"{JSONL} has no line for frame {frame}")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def record_instances(rec: dict[str, Any], image_size: tuple[int, int]) -> Instances:
    """A stored JSON line -> Instances (for drawing)."""
    items = rec["instances"]
    names: dict[int, str] = {int(it["class"]): it.get("class_name", "") for it in items}
    class_names = [names.get(c, str(c)) for c in range(max(names, default=-1) + 1)]
    return Instances(boxes=np.array([it["box"] for it in items], dtype=np.float32).reshape(-1, 4),
                     scores=np.array([it["score"] for it in items], dtype=np.float32),
                     classes=np.array([it["class"] for it in items], dtype=np.int64),
                     rle=[it["rle"] for it in items], image_size=image_size, class_names=class_names)


def frame_record(frame: int, timestamp_s: float, inst: Instances) -> dict[str, Any]:
    return {"frame": int(frame), "timestamp_s": round(float(timestamp_s), 6), "instances": [
        {"box": [round(float(v), 2) for v in inst.boxes[i]], "score": round(float(inst.scores[i]), 5),
         "class": int(inst.classes[i]), "class_name": inst.class_name(i),
         "rle": {"size": [int(s) for s in inst.rle[i]["size"]], "counts": inst.rle[i]["counts"]}}
        for i in range(len(inst))]}


# ---- reports ----------------------------------------------------------------------------------
@dataclass
class VideoReport:
    video: str
    out_dir: str = ""
    frames_processed: int = 0  # by this run
    frames_failed: int = 0  # decode failures of frames that were to be processed
    instances: int = 0  # with score >= score_thresh, this run
    seconds: float = 0.0
    resumed_after_frame: int | None = None
    skipped: bool = False  # done.json was there
    done: bool = False
    interrupted: bool = False
    error: str | None = None

    @property
    def frames_per_s(self) -> float:
        return self.frames_processed / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "frames_per_s": self.frames_per_s}


@dataclass
class VideoSummary:
    reports: list[VideoReport] = field(default_factory=list)
    seconds: float = 0.0
    processing_s: float = 0.0  # from the first video's start to the last one's end
    startup: dict[str, float] = field(default_factory=dict)  # before the first video (Ray: start-up, workers)
    workers: list[dict[str, Any]] = field(default_factory=list)  # per worker: videos, frames, busy_s, frames_per_s

    @property
    def failed(self) -> list[VideoReport]:
        return [r for r in self.reports if r.error]

    @property
    def interrupted(self) -> bool:
        return any(r.interrupted for r in self.reports)

    @property
    def frames_processed(self) -> int:
        return sum(r.frames_processed for r in self.reports)

    @property
    def frames_failed(self) -> int:
        return sum(r.frames_failed for r in self.reports)

    @property
    def mean_instances(self) -> float:
        n = self.frames_processed
        return sum(r.instances for r in self.reports) / n if n else 0.0

    @property
    def frames_per_s(self) -> float:
        busy = sum(r.seconds for r in self.reports)
        return self.frames_processed / busy if busy else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The run summary JSON: counts, frames, seconds, per-worker throughput, per-video reports."""
        return {"videos": len(self.reports),
                "done": sum(r.done and not r.skipped for r in self.reports),
                "skipped": sum(r.skipped for r in self.reports),
                "failed": len(self.failed),
                "interrupted": sum(r.interrupted for r in self.reports),
                "failed_videos": [{"video": r.video, "error": r.error} for r in self.failed],
                "frames": self.frames_processed, "frames_failed": self.frames_failed,
                "seconds": self.seconds, "startup_s": sum(self.startup.values()), "startup": self.startup,
                "processing_s": self.processing_s,
                "frames_per_s": self.frames_processed / self.processing_s if self.processing_s else 0.0,
                "workers": self.workers, "reports": [r.to_dict() for r in self.reports]}

    def format(self, score_thresh: float) -> str:
        skipped = sum(r.skipped for r in self.reports)
        return (f"{len(self.reports)} video(s) ({skipped} already done, {len(self.failed)} failed): "
                f"{self.frames_processed} frame(s) processed, {self.frames_failed} failed to decode, "
                f"{self.mean_instances:.2f} instance(s) per frame with score >= {score_thresh}, "
                f"{self.frames_per_s:.1f} frames/s")


# ---- the pipeline ------------------------------------------------------------------------------
_END = object()


class _Stop:
    """Ctrl-C: the first one finishes the current batch and stops; a second one raises."""

    def __init__(self):
        self.event = threading.Event()
        self._old = None

    def __enter__(self) -> "_Stop":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)

            def handler(signum, frame):
                if self.event.is_set():
                    raise KeyboardInterrupt
                log.warning("interrupted: finishing the current batch (Ctrl-C again to abort)")
                self.event.set()

            signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _get(q: queue.Queue, abort: threading.Event):
    """Get, or _END once abort is set (the producer may have gone away)."""
    while not abort.is_set():
        try:
            return q.get(timeout=0.2)
        except queue.Empty:
            continue
    return _END


def _put(q: queue.Queue, item, abort: threading.Event) -> bool:
    """Put unless the consumer has gone away (abort set); returns False then."""
    while not abort.is_set():
        try:
            q.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


class _Decoder(threading.Thread):
    """Reads frames; emits ("frame", i, t, rgb) for frames to process, ("replay", i, rgb) for
    already processed frames whose overlay is rebuilt, then _END. Errors go to self.error."""

    def __init__(self, cap, first: np.ndarray, fps: float, frame_count: int, start: int, every: int,
                 replay: set[int], out: queue.Queue, stop: threading.Event, abort: threading.Event,
                 camera: bool, name: str):
        super().__init__(daemon=True, name=f"decode-{name}")
        self.cap, self.first, self.fps, self.frame_count = cap, first, fps, frame_count
        self.start_frame, self.every, self.replay, self.out = start, every, replay, out
        self.stop, self.abort, self.camera, self.label = stop, abort, camera, name
        self.failed = 0
        self.error: str | None = None
        self.t0 = time.monotonic()

    def _timestamp(self, i: int) -> float:
        if self.camera or self.fps <= 0:
            if not self.camera:
                msec = self.cap.get(cv2.CAP_PROP_POS_MSEC)
                if msec > 0:
                    return msec / 1000.0
            return time.monotonic() - self.t0
        return i / self.fps

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            self.error = f"decoder: {e}"
        finally:
            _put(self.out, _END, self.abort)

    def _run(self) -> None:
        i, streak, streak_wanted = 0, 0, 0
        frame: np.ndarray | None = self.first
        while not self.stop.is_set() and not self.abort.is_set():
            wanted = i >= self.start_frame and i % self.every == 0
            if i > 0:
                if wanted or i in self.replay:
                    ok, frame = self.cap.read()
                else:
                    ok, frame = self.cap.grab(), None
                if not ok:
                    if self.camera:
                        self.error = f"camera stopped delivering frames at frame {i}"
                        return
                    if self.frame_count <= 0 or i >= self.frame_count:
                        if streak:  # the failures ran up to the end: a frame count that was too high
                            self.failed -= streak_wanted
                            log.warning("%s: the container reports %d frames, the stream ended at frame %d",
                                        self.label, self.frame_count, i - streak)
                        return
                    streak += 1
                    streak_wanted += wanted
                    self.failed += wanted
                    log.warning("%s: frame %d of %d could not be decoded: skipped", self.label, i, self.frame_count)
                    if streak >= MAX_CONSECUTIVE_FAILURES:
                        self.error = (f"gave up after {streak} consecutive undecodable frames "
                                      f"(frame {i} of {self.frame_count})")
                        return
                    i += 1
                    continue
                streak, streak_wanted = 0, 0
            if wanted:
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                if not _put(self.out, ("frame", i, self._timestamp(i), rgb), self.abort):
                    return
            elif i in self.replay:
                if not _put(self.out, ("replay", i, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)), self.abort):
                    return
            i += 1


class _Writer(threading.Thread):
    """Writes JSON lines (one write + flush each, fsync on "sync") and the overlay video."""

    def __init__(self, out_dir: Path, inq: queue.Queue, abort: threading.Event, overlay: bool, fps: float,
                 score_thresh: float, append: bool):
        super().__init__(daemon=True, name=f"write-{out_dir.name}")
        self.out_dir, self.inq, self.abort = out_dir, inq, abort
        self.overlay, self.fps, self.score_thresh = overlay, fps if fps > 0 else 25.0, score_thresh
        self.jsonl = open(out_dir / JSONL, "ab" if append else "wb")
        self.video: cv2.VideoWriter | None = None
        self.frames_written = 0
        self.error: str | None = None

    def _draw(self, rgb: np.ndarray, inst: Instances) -> None:
        if self.video is None:
            h, w = rgb.shape[:2]
            path = self.out_dir / OVERLAY_TMP
            if path.exists():
                path.unlink()
            self.video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.video.isOpened():
                raise OSError(f"cannot write the overlay video {path}")
        drawn = draw_instances(rgb, inst, self.score_thresh)
        self.video.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))

    def run(self) -> None:
        try:
            while True:
                item = self.inq.get()
                if item is _END:
                    return
                kind = item[0]
                if kind == "sync":
                    self.jsonl.flush()
                    os.fsync(self.jsonl.fileno())
                elif kind == "replay":
                    _, rgb, rec = item
                    self._draw(rgb, record_instances(rec, rgb.shape[:2]))
                else:
                    _, frame, t, rgb, inst = item
                    line = json.dumps(frame_record(frame, t, inst), separators=(",", ":")) + "\n"
                    self.jsonl.write(line.encode())
                    self.jsonl.flush()
                    self.frames_written += 1
                    if self.overlay:
                        self._draw(rgb, inst)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            self.error = f"writer: {e}"
            self.abort.set()
        finally:
            self.close()

    def close(self) -> None:
        if not self.jsonl.closed:
            self.jsonl.flush()
            os.fsync(self.jsonl.fileno())
            self.jsonl.close()
        if self.video is not None:
            self.video.release()
            self.video = None
            if self.error is None:
                os.replace(self.out_dir / OVERLAY_TMP, self.out_dir / OVERLAY)


def _open(source: str | int, label: str):
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"{label}: not a video (cannot be opened)")
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise VideoError(f"{label}: not a video (no frame could be decoded)")
    return cap, first


def _kept_frames(out: Path, camera: bool, label: str, report: VideoReport) -> list[int]:
    """The frame indices of the complete lines an earlier run left in `out/instances.jsonl` (cut
    after the last one, see `recover_jsonl`); [] for a camera or a first run. Notes the resume
    point in `report`."""
    done_frames = [] if camera else recover_jsonl(out / JSONL)
    if done_frames:
        report.resumed_after_frame = done_frames[-1]
        log.info("%s: resuming after frame %d (%d line(s) kept)", label, done_frames[-1], len(done_frames))
    return done_frames


class _Pipeline:
    """One video's threads and bounded queues: decoder -> frames_q -> (inference, in the calling
    thread) -> write_q -> writer. With `overlay`, the frames already in instances.jsonl
    (`done_frames`) are decoded again and drawn from their stored lines (`records`); the writer
    appends to instances.jsonl when there are such lines, else starts it afresh."""

    def __init__(self, cap, first: np.ndarray, out: Path, camera: bool, done_frames: list[int], batch_size: int,
                 every: int, overlay: bool, score_thresh: float, stop: threading.Event):
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = -1 if camera else int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or -1)
        self.start_frame, self.every = (done_frames[-1] + 1 if done_frames else 0), every
        self.abort = threading.Event()  # set on the way out, or by the writer when it fails
        replay = set(done_frames) if overlay else set()
        self.records = _Records(out / JSONL if replay else None)
        self.frames_q: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES * batch_size)
        self.write_q: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES * batch_size + 2)
        self.decoder = _Decoder(cap, first, self.fps, self.frame_count, self.start_frame, every, replay,
                                self.frames_q, stop, self.abort, camera, out.name)
        self.writer = _Writer(out, self.write_q, self.abort, overlay, self.fps, score_thresh,
                              append=bool(done_frames))

    def frames_to_do(self) -> int | None:
        """The frames this run is to process (the progress bar's total); None without a frame count."""
        if self.frame_count <= 0:
            return None
        return max(0, math.ceil(self.frame_count / self.every) - math.ceil(self.start_frame / self.every))

    def start(self) -> None:
        self.decoder.start()
        self.writer.start()

    def next_batch(self, batch_size: int) -> tuple[list[tuple], bool]:
        """Up to `batch_size` decoded ("frame", i, t, rgb [H, W, 3] uint8) items, passing replayed
        frames on to the writer with their stored lines; returns (batch, whether decoding ended)."""
        batch: list[tuple] = []
        while len(batch) < batch_size:
            item = _get(self.frames_q, self.abort)
            if item is _END:
                return batch, True
            if item[0] == "replay":
                _put(self.write_q, ("replay", item[2], self.records.take(item[1])), self.abort)
                continue
            batch.append(item)
        return batch, False

    def close(self) -> None:
        """Stop the decoder (abort releases it if it waits on a full queue); the writer finishes what
        it was given, then closes its files (instances.jsonl fsync'ed, overlay renamed into place)."""
        self.abort.set()
        while self.writer.is_alive():
            try:
                self.write_q.put(_END, timeout=0.2)
                break
            except queue.Full:
                continue
        self.writer.join()
        self.decoder.join(timeout=10)
        self.records.close()


def _segment_frames(pipe: _Pipeline, predict: BatchPredictor, batch_size: int, score_thresh: float,
                    stop: threading.Event, report: VideoReport, bar: tqdm, last_frame: int | None) -> int | None:
    """The calling thread's part: batches of decoded frames through `predict`, each result to the
    writer and an fsync ("sync") after every batch, until decoding ends or `stop` or the pipeline's
    abort is set. Counts frames and instances (score >= score_thresh) in `report`; returns the last
    frame index with a line (`last_frame` when this run processed none). Raises what `predict`
    raises, and RuntimeError when it returns another number of results than frames."""
    finished = False
    while not finished and not pipe.abort.is_set() and not stop.is_set():
        batch, finished = pipe.next_batch(batch_size)
        if not batch:
            continue
        results = predict([rgb for _, _, _, rgb in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"the predictor returned {len(results)} results for {len(batch)} frames")
        for (_, i, t, rgb), inst in zip(batch, results):
            _put(pipe.write_q, ("frame", i, t, rgb, inst), pipe.abort)
            last_frame = i
            report.instances += int((inst.scores >= score_thresh).sum())
        _put(pipe.write_q, ("sync",), pipe.abort)
        report.frames_processed += len(batch)
        bar.update(len(batch))
    return last_frame


def _conclude(report: VideoReport, pipe: _Pipeline, camera: bool, label: str, stop: threading.Event) -> None:
    """After the threads ended: the decode failures, the first error (inference, then writer, then
    decoder; a camera that stops delivering frames only warns) and whether the run was stopped."""
    report.frames_failed = pipe.decoder.failed
    if report.error is None and pipe.writer.error:
        report.error = f"{label}: {pipe.writer.error}"
    if report.error is None and pipe.decoder.error:
        if camera:
            log.warning("%s: %s", label, pipe.decoder.error)
        else:
            report.error = f"{label}: {pipe.decoder.error}"
    report.interrupted = stop.is_set()


def process_video(source: str | os.PathLike | int, out_dir: str | os.PathLike, predict: BatchPredictor,
                  batch_size: int = 8, every: int = 1, overlay: bool = False, score_thresh: float = 0.3,
                  progress: bool = True, stop: threading.Event | None = None) -> VideoReport:
    """Segment one video file (or camera index) into OUT_DIR (this video's folder). Never raises
    for a bad video: the report's `error` says what went wrong."""
    if batch_size < 1 or every < 1:
        raise ValueError(f"batch_size and every must be >= 1, got {batch_size} and {every}")
    camera = isinstance(source, int)
    label = f"camera {source}" if camera else str(source)
    out = Path(out_dir)
    report = VideoReport(video=label, out_dir=str(out))
    if not camera and (out / DONE).exists():
        report.skipped = report.done = True
        log.info("%s: already done (%s): skipped", label, out / DONE)
        return report
    try:
        cap, first = _open(source if camera else str(source), label)
    except VideoError as e:
        report.error = str(e)
        log.error("%s", e)
        return report
    stop = stop or threading.Event()
    try:
        out.mkdir(parents=True, exist_ok=True)
        done_frames = _kept_frames(out, camera, label, report)
        pipe = _Pipeline(cap, first, out, camera, done_frames, batch_size, every, overlay, score_thresh, stop)
        bar = tqdm(total=pipe.frames_to_do(), desc=out.name, unit="frame", disable=not progress)
        pipe.start()
        t0 = time.perf_counter()
        last_frame = done_frames[-1] if done_frames else None
        try:
            last_frame = _segment_frames(pipe, predict, batch_size, score_thresh, stop, report, bar, last_frame)
        except Exception as e:  # noqa: BLE001 - inference failed: reported, the other videos go on
            report.error = f"{label}: {type(e).__name__}: {e}"
            log.error("%s", report.error)
        finally:
            pipe.close()
            report.seconds = time.perf_counter() - t0
            bar.close()
        _conclude(report, pipe, camera, label, stop)
        if report.error:
            log.error("%s", report.error)
        elif not report.interrupted and not camera:
            report.done = True
            write_json_atomic(out / DONE, output_facts(label, every, len(done_frames) + report.frames_processed,
                                                       last_frame))
        return report
    finally:
        cap.release()


def output_facts(video: str, every: int, frames: int, last_frame: int | None) -> dict[str, Any]:
    """done.json: what a finished video's output holds, the same whatever history made it.
    frames_failed: the frames 0, every, ... up to last_frame that have no line (undecodable)."""
    wanted = 0 if last_frame is None else last_frame // every + 1
    return {"video": video, "every": every, "frames": frames, "last_frame": last_frame,
            "frames_failed": wanted - frames, "done": True}


def process_videos(source: str | os.PathLike | Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                   predict: BatchPredictor, batch_size: int = 8, every: int = 1, overlay: bool = False,
                   score_thresh: float = 0.3, progress: bool = True) -> VideoSummary:
    """Video files, folders, globs, list files (boxinst_serve.apps.video.inputs) or one camera index ("0")
    -> OUT_DIR/<video>/ each. Ctrl-C finishes the current batch of the current video and stops."""
    out = Path(out_dir)
    summary = VideoSummary()
    t0 = time.perf_counter()
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    cam = camera_index(sources[0]) if len(sources) == 1 else None
    with _Stop() as stopper:
        if cam is not None:
            cam_dir = out / f"camera{cam}"
            for name in (DONE, JSONL):
                if (cam_dir / name).exists():
                    (cam_dir / name).unlink()
            summary.reports.append(process_video(cam, cam_dir, predict, batch_size, every, overlay, score_thresh,
                                                 progress, stopper.event))
        else:
            for task in plan_videos(sources, out):
                if stopper.event.is_set():
                    break
                summary.reports.append(process_video(task.video, task.out_dir, predict, batch_size, every, overlay,
                                                     score_thresh, progress, stopper.event))
    summary.seconds = summary.processing_s = time.perf_counter() - t0
    frames, busy = summary.frames_processed, sum(r.seconds for r in summary.reports)
    summary.workers = [{"worker": "local", "pid": os.getpid(), "videos": sum(not r.skipped for r in summary.reports),
                        "frames": frames, "busy_s": busy, "frames_per_s": frames / busy if busy else 0.0}]
    return summary
