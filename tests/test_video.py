"""`boxinst video`: a short clip made from tiny_shapes frames, segmented end to end in-process
(ONNX Runtime) and through a real Triton server; --every; resuming after a kill or a cut line;
a corrupt file in a folder is reported by name while the good video is processed."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from boxinst_serve.cli import main
from boxinst_serve.apps.video.pipeline import DONE, JSONL, OVERLAY, recover_jsonl

ROOT = Path(__file__).resolve().parents[1]
NUM_FRAMES = 12
RUN_S = 300  # deadline of one `boxinst video` command: the kill and the resume took 5.5-15.2 s in all under load


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture(scope="module")
def clip(tiny_shapes, tmp_path_factory) -> Path:
    """12 frames of 128x160 (mp4v, 10 fps): each shapes image held for 3 frames, shifted a little."""
    images = sorted(Path(tiny_shapes["images"]).glob("*.png"))[:4]
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 128))
    assert writer.isOpened()
    for i in range(NUM_FRAMES):
        bgr = cv2.imread(str(images[i // 3]))
        frame = np.zeros((128, 160, 3), dtype=np.uint8)
        frame[:, 4 * (i % 3): 4 * (i % 3) + 128] = bgr
        writer.write(frame)
    writer.release()
    assert count_frames(path) == NUM_FRAMES
    return path


@pytest.fixture(scope="module")
def onnx_model(lite_onnx) -> Path:
    return lite_onnx


@pytest.fixture(scope="module")
def full_run(clip, onnx_model, tmp_path_factory) -> Path:
    """An uninterrupted --model run with overlay: the reference the other runs are compared to."""
    out = tmp_path_factory.mktemp("video_full")
    assert main(["video", str(clip), "--out", str(out), "--model", str(onnx_model), "--batch-size", "4",
                 "--overlay", "--quiet"]) == 0
    return out / "clip"


def assert_same_records(got: list[dict], ref: list[dict]) -> None:
    assert [r["frame"] for r in got] == [r["frame"] for r in ref]
    for a, b in zip(got, ref):
        assert len(a["instances"]) == len(b["instances"]), a["frame"]
        if a["instances"]:
            np.testing.assert_allclose([i["box"] for i in a["instances"]], [i["box"] for i in b["instances"]],
                                       atol=0.1)


def test_batched_frames_give_the_single_frame_answers(clip, full_run, trained_lite):
    """--batch-size 4 (the frames of a video share one size, so a batch pads nothing extra): every
    frame's instances are the model's on that single frame, within the records' rounding: the
    checkpoint's torch model, pre- and post-processed by tests/reference.py (no code shared with
    the command's prepare_for and instances_for). The --url runs are compared with this run."""
    from pycocotools import mask as mask_utils

    from tests.reference import TorchReference

    reference = TorchReference(trained_lite)
    cap = cv2.VideoCapture(str(clip))
    compared = 0
    for rec in read_lines(full_run / JSONL):
        ok, bgr = cap.read()
        assert ok
        want = reference(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        got = rec["instances"]
        assert len(got) == len(want), rec["frame"]
        if not got:
            continue
        np.testing.assert_allclose([i["box"] for i in got], want.boxes, rtol=0, atol=0.05)
        np.testing.assert_allclose([i["score"] for i in got], want.scores, rtol=0, atol=5e-4)
        assert [i["class"] for i in got] == want.classes.tolist()
        for item, w in zip(got, want.rle):
            a = mask_utils.decode({"size": item["rle"]["size"], "counts": item["rle"]["counts"].encode()})
            b = mask_utils.decode({"size": w["size"], "counts": w["counts"].encode()})
            if (a | b).any():
                compared += 1
                assert (a & b).sum() / (a | b).sum() >= 0.99, rec["frame"]
    cap.release()
    assert compared > 0, "no non-empty mask was compared"


def test_model_run_writes_every_frame_in_order(clip, full_run, capsys):
    records = read_lines(full_run / JSONL)
    assert [r["frame"] for r in records] == list(range(NUM_FRAMES))
    np.testing.assert_allclose([r["timestamp_s"] for r in records], np.arange(NUM_FRAMES) / 10.0, atol=1e-3)
    assert sum(len(r["instances"]) for r in records) > 0  # the trained model finds shapes
    inst = next(i for r in records for i in r["instances"])
    assert set(inst) == {"box", "score", "class", "class_name", "rle"}
    assert inst["rle"]["size"] == [128, 160] and isinstance(inst["rle"]["counts"], str)
    done = json.loads((full_run / DONE).read_text())
    assert done == {"video": str(clip), "every": 1, "frames": NUM_FRAMES, "last_frame": NUM_FRAMES - 1,
                    "frames_failed": 0, "done": True}
    summary = json.loads((full_run.parent / "summary.json").read_text())
    assert summary["done"] == 1 and summary["frames"] == NUM_FRAMES and summary["reports"][0]["seconds"] > 0
    assert count_frames(full_run / OVERLAY) == NUM_FRAMES
    assert not (full_run / "overlay.writing.mp4").exists()


def test_every_nth_frame(clip, onnx_model, full_run, tmp_path):
    assert main(["video", str(clip), "--out", str(tmp_path), "--model", str(onnx_model), "--every", "3",
                 "--batch-size", "2", "--quiet"]) == 0
    records = read_lines(tmp_path / "clip" / JSONL)
    assert [r["frame"] for r in records] == [0, 3, 6, 9]
    ref = {r["frame"]: r for r in read_lines(full_run / JSONL)}
    assert_same_records(records, [ref[f] for f in (0, 3, 6, 9)])


def test_done_video_is_skipped(clip, onnx_model, full_run, capsys):
    before = (full_run / JSONL).read_bytes()
    assert main(["video", str(clip), "--out", str(full_run.parent), "--model", str(onnx_model), "--quiet"]) == 0
    assert (full_run / JSONL).read_bytes() == before
    assert "1 already done" in capsys.readouterr().out


def test_resume_after_a_line_cut_mid_way(clip, onnx_model, full_run, tmp_path):
    """A run killed while writing line 6: five complete lines and half a line are left behind."""
    out = tmp_path / "clip"
    out.mkdir()
    data = (full_run / JSONL).read_bytes().split(b"\n")
    (out / JSONL).write_bytes(b"\n".join(data[:5]) + b"\n" + data[5][: len(data[5]) // 2])
    assert recover_jsonl(out / JSONL) == [0, 1, 2, 3, 4]
    assert (out / JSONL).read_bytes().endswith(b"}\n")
    assert main(["video", str(clip), "--out", str(tmp_path), "--model", str(onnx_model), "--batch-size", "3",
                 "--overlay", "--quiet"]) == 0
    assert_same_records(read_lines(out / JSONL), read_lines(full_run / JSONL))
    assert json.loads((tmp_path / "summary.json").read_text())["reports"][0]["resumed_after_frame"] == 4
    assert (out / DONE).read_bytes() == (full_run / DONE).read_bytes()  # done.json: the output, not the run
    assert count_frames(out / OVERLAY) == NUM_FRAMES  # rebuilt from frame 0: stored frames drawn again


def test_resume_after_sigkill(clip, onnx_model, full_run, tmp_path):
    cmd = [sys.executable, "-m", "boxinst_serve.cli", "video", str(clip), "--out", str(tmp_path), "--model",
           str(onnx_model), "--batch-size", "1", "--quiet"]
    jsonl = tmp_path / "clip" / JSONL
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Polled until the first frame is written (the command's start, its imports and the model, is
    # most of the wait: seconds; the deadline only keeps a broken run from hanging the test).
    deadline = time.monotonic() + RUN_S
    while proc.poll() is None and not (jsonl.exists() and jsonl.stat().st_size > 0):
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no frame written in {RUN_S} s")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=RUN_S)
    # The kill landed mid-run: the process died of it, after writing output and before the last frame.
    assert proc.returncode == -signal.SIGKILL, f"the run ended (code {proc.returncode}) before the kill"
    assert not (tmp_path / "clip" / DONE).exists()
    assert jsonl.stat().st_size > 0 and len(recover_jsonl(jsonl)) < NUM_FRAMES
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=RUN_S)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = read_lines(jsonl)
    assert [r["frame"] for r in records] == list(range(NUM_FRAMES))  # each frame once, in order
    assert_same_records(records, read_lines(full_run / JSONL))


def test_corrupt_file_is_reported_and_the_good_one_processed(clip, onnx_model, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(clip, videos / "good.mp4")
    (videos / "bad.mp4").write_text("this is not a video\n")
    out = tmp_path / "out"
    assert main(["video", str(videos), "--out", str(out), "--model", str(onnx_model), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "bad.mp4" in err and "not a video" in err
    assert [r["frame"] for r in read_lines(out / "good" / JSONL)] == list(range(NUM_FRAMES))
    assert not (out / "bad").exists()


def test_recover_jsonl_drops_invalid_and_out_of_order_lines(tmp_path):
    path = tmp_path / JSONL
    path.write_bytes(b'{"frame":0}\n{"frame":2}\n{"frame":1}\n{"frame":5}\n')
    assert recover_jsonl(path) == [0, 2]
    assert path.read_bytes() == b'{"frame":0}\n{"frame":2}\n'
    path.write_bytes(b'{"frame":0}\nnot json\n')
    assert recover_jsonl(path) == [0]
    assert recover_jsonl(tmp_path / "missing.jsonl") == []


# ---- through a real Triton server ---------------------------------------------------------------
@pytest.fixture(scope="module")
def server_url(trained_lite, onnx_model, tmp_path_factory):
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the serve extra) ships the tritonserver binary")
    pytest.importorskip("tritonclient.grpc")
    from export.triton import write_triton_net

    from boxinst_serve.serving.server import TritonServer

    repo = tmp_path_factory.mktemp("video_serving") / "model_repository"
    shutil.copytree(ROOT / "model_repository", repo, ignore=shutil.ignore_patterns("boxinst_net", ".boxinst_net*"))
    write_triton_net(trained_lite, repo, flavour="cpu", onnx_path=onnx_model)
    server = TritonServer(repo, grpc_port=0, http_port=0, metrics_port=0)
    server.start(timeout_s=240)
    try:
        yield server.grpc_url
    finally:
        server.stop()


def test_url_run_agrees_with_model_run(clip, server_url, full_run, tmp_path):
    assert main(["video", str(clip), "--out", str(tmp_path), "--url", server_url, "--batch-size", "4",
                 "--quiet"]) == 0
    records = read_lines(tmp_path / "clip" / JSONL)
    ref = read_lines(full_run / JSONL)
    assert [r["frame"] for r in records] == list(range(NUM_FRAMES))
    assert [len(r["instances"]) for r in records] == [len(r["instances"]) for r in ref]
    assert_same_records(records, ref)


# ---- decode failures and inference errors, with a scripted capture and predictor ----------------
class ScriptedCapture:
    """cv2.VideoCapture stand-in: `frame_count` frames of 32x48, read() fails at `bad` indices."""

    def __init__(self, frame_count: int, bad: set[int]):
        self.frame_count, self.bad, self.i = frame_count, bad, 1  # frame 0 is handed over by _open

    def read(self):
        i, self.i = self.i, self.i + 1
        if i >= self.frame_count or i in self.bad:
            return False, None
        return True, np.full((32, 48, 3), i, dtype=np.uint8)

    def grab(self):
        return self.read()[0]

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: 5.0, cv2.CAP_PROP_FRAME_COUNT: float(self.frame_count)}.get(prop, 0.0)

    def release(self):
        pass


def no_instances(frames):
    from boxinst_serve.results import Instances

    return [Instances(boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                      classes=np.zeros(0, np.int64), rle=[], image_size=f.shape[:2]) for f in frames]


def scripted(monkeypatch, frame_count: int, bad: set[int]):
    import boxinst_serve.apps.video.pipeline as video

    monkeypatch.setattr(video, "_open", lambda source, label: (ScriptedCapture(frame_count, bad),
                                                               np.zeros((32, 48, 3), np.uint8)))
    return video


def test_undecodable_frames_are_skipped_and_counted(monkeypatch, tmp_path):
    video = scripted(monkeypatch, 8, {3, 4})
    report = video.process_video("x.mp4", tmp_path / "x", no_instances, batch_size=2, progress=False)
    assert report.error is None and report.done and report.frames_failed == 2
    assert [r["frame"] for r in read_lines(tmp_path / "x" / JSONL)] == [0, 1, 2, 5, 6, 7]
    assert read_lines(tmp_path / "x" / JSONL)[1]["timestamp_s"] == pytest.approx(0.2)


def test_too_many_consecutive_failures_give_the_video_up(monkeypatch, tmp_path):
    video = scripted(monkeypatch, 40, set(range(2, 40)))
    report = video.process_video("x.mp4", tmp_path / "x", no_instances, batch_size=2, progress=False)
    assert "consecutive" in report.error and not report.done
    assert not (tmp_path / "x" / DONE).exists()
    assert [r["frame"] for r in read_lines(tmp_path / "x" / JSONL)] == [0, 1]


def test_inference_error_keeps_the_finished_lines_and_resumes(monkeypatch, tmp_path):
    video = scripted(monkeypatch, 10, set())
    calls = []

    def flaky(frames):
        calls.append(len(frames))
        if len(calls) == 3:
            raise ConnectionError("server went away")
        return no_instances(frames)

    report = video.process_video("x.mp4", tmp_path / "x", flaky, batch_size=2, progress=False)
    assert "server went away" in report.error and not (tmp_path / "x" / DONE).exists()
    assert [r["frame"] for r in read_lines(tmp_path / "x" / JSONL)] == [0, 1, 2, 3]
    video = scripted(monkeypatch, 10, set())
    report = video.process_video("x.mp4", tmp_path / "x", no_instances, batch_size=4, progress=False)
    assert report.done and report.resumed_after_frame == 3 and report.frames_processed == 6
    assert [r["frame"] for r in read_lines(tmp_path / "x" / JSONL)] == list(range(10))


def test_failures_up_to_an_overstated_frame_count_are_the_end(monkeypatch, tmp_path):
    video = scripted(monkeypatch, 12, {8, 9, 10, 11})  # the container claims 12 frames, 8 decode
    report = video.process_video("x.mp4", tmp_path / "x", no_instances, batch_size=3, progress=False)
    assert report.error is None and report.done and report.frames_failed == 0
    assert [r["frame"] for r in read_lines(tmp_path / "x" / JSONL)] == list(range(8))


def test_bench_video_compares_the_plain_loop_with_batched_runs(clip, onnx_model, capsys):
    from boxinst_serve.cli import main

    assert main(["bench", "--video", str(clip), "--checkpoint", str(onnx_model), "--batch-sizes", "1,4",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    assert [(r["path"], r["batch"]) for r in rows] == [("plain loop", 1), ("boxinst video", 1), ("boxinst video", 4)]
    assert len({r["frames"] for r in rows}) == 1 and rows[0]["frames"] > 0
    assert all(r["frames_per_s"] > 0 for r in rows)
