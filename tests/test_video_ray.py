"""`boxinst video --ray` on a local Ray cluster: `ray.init(num_cpus=2, num_gpus=1)` once for the
module (one logical GPU, so the workers' num_gpus path runs on this CPU machine), shut down at its
end with no Ray process left behind. Three small clips and a corrupt file, the lite model in ONNX:
the outputs equal the single-process path's byte for byte after a clean run, after a worker killed
mid-video and after a driver killed and run again; a rerun does no inference; the corrupt file
fails alone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is the `cluster` extra (make install installs it)")

from boxinst_serve.cli import main  # noqa: E402
from boxinst_serve.apps.video.pipeline import DONE, JSONL, engine_batch_predictor, process_videos  # noqa: E402
from boxinst_serve.apps.video.ray import (LOCK, PredictorSpec, RayConfig, VideoLocked, run_videos_on_ray,  # noqa: E402
                                     video_lock)

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ("alpha", "beta", "gamma")
NUM_FRAMES = 12
BATCH = 4
RAY_MARKERS = ("ray::", "raylet", "gcs_server", "default_worker.py", "/site-packages/ray/")


def ray_processes() -> dict[int, str]:
    """pid -> command line of every process that looks like Ray's."""
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if any(m in cmd for m in RAY_MARKERS):
                found[int(d.name)] = cmd[:120]
    return found


@pytest.fixture(scope="module")
def cluster() -> str:
    """A 2-CPU, 1-logical-GPU Ray for the module; its GCS address. Teardown asserts that every Ray
    process it started is gone."""
    before = set(ray_processes())
    ctx = ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=100 << 20,
                   logging_level="WARNING")
    try:
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()
        deadline = time.monotonic() + 30
        left = {p: c for p, c in ray_processes().items() if p not in before}
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = {p: c for p, c in ray_processes().items() if p not in before}
        assert not left, f"Ray processes left behind after ray.shutdown(): {left}"


def write_clip(path: Path, images: list[Path]) -> None:
    """NUM_FRAMES frames of 128x160 (mp4v, 10 fps): each image held for 3 frames, shifted a little."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 128))
    assert writer.isOpened()
    for i in range(NUM_FRAMES):
        frame = np.zeros((128, 160, 3), dtype=np.uint8)
        frame[:, 4 * (i % 3): 4 * (i % 3) + 128] = cv2.imread(str(images[i // 3]))
        writer.write(frame)
    writer.release()


@pytest.fixture(scope="module")
def videos(tiny_shapes, tmp_path_factory) -> Path:
    """alpha.mp4, beta.mp4, gamma.mp4 (different shapes images) and corrupt.mp4 (an mp4 header, then noise)."""
    images = sorted(Path(tiny_shapes["images"]).glob("*.png"))
    folder = tmp_path_factory.mktemp("ray_videos")
    for k, name in enumerate(CLIPS):
        write_clip(folder / f"{name}.mp4", images[4 * k: 4 * k + 4])
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(0).bytes(4000))
    return folder


@pytest.fixture(scope="module")
def reference(videos, lite_onnx, tmp_path_factory) -> Path:
    """The single-process path on the same folder, model and batch size."""
    from boxinst_serve.engines import load_engine

    out = tmp_path_factory.mktemp("single_process")
    summary = process_videos(str(videos), out, engine_batch_predictor(load_engine(lite_onnx)), batch_size=BATCH,
                             progress=False)
    assert [Path(r.video).name for r in summary.failed] == ["corrupt.mp4"]
    return out


def assert_same_outputs(out: Path, reference: Path) -> None:
    for name in CLIPS:
        assert (out / name / JSONL).read_bytes() == (reference / name / JSONL).read_bytes(), name
        assert (out / name / DONE).read_bytes() == (reference / name / DONE).read_bytes(), name


@pytest.fixture(scope="module")
def ray_run(cluster, videos, lite_onnx, tmp_path_factory):
    """`boxinst video FOLDER --ray ADDRESS --workers 2 --gpus-per-worker 0.5`: exit code, OUT, summary."""
    out = tmp_path_factory.mktemp("ray_out")
    rc = main(["video", str(videos), "--out", str(out), "--model", str(lite_onnx), "--batch-size", str(BATCH),
               "--ray", cluster, "--workers", "2", "--gpus-per-worker", "0.5", "--quiet"])
    return rc, out, json.loads((out / "summary.json").read_text())


def test_outputs_equal_the_single_process_run_byte_for_byte(ray_run, reference):
    rc, out, summary = ray_run
    assert_same_outputs(out, reference)
    assert sorted(p.name for p in out.iterdir()) == sorted([*CLIPS, "summary.json"])  # no folder for corrupt.mp4
    workers = summary["workers"]
    assert len(workers) == 2 and all(w["gpu_ids"] == ["0"] for w in workers)  # half of the logical GPU each
    assert sum(w["videos"] for w in workers) == 4 and sum(w["frames"] for w in workers) == 3 * NUM_FRAMES
    assert summary["startup"]["workers_start_s"] > 0 and summary["processing_s"] > 0


def test_a_corrupt_file_fails_alone_and_sets_the_exit_code(ray_run):
    rc, out, summary = ray_run
    assert rc == 1
    assert (summary["videos"], summary["done"], summary["failed"]) == (4, 3, 1)
    assert summary["frames"] == 3 * NUM_FRAMES
    [failed] = summary["failed_videos"]
    assert Path(failed["video"]).name == "corrupt.mp4" and "not a video" in failed["error"]


def test_a_rerun_does_no_inference(ray_run, cluster, videos, lite_onnx, tmp_path):
    rc, out, _ = ray_run
    files = [out / name / f for name in CLIPS for f in (JSONL, DONE)]
    before = [(f.read_bytes(), f.stat().st_mtime_ns) for f in files]
    rc = main(["video", *[str(videos / f"{n}.mp4") for n in CLIPS], "--out", str(out), "--model", str(lite_onnx),
               "--ray", cluster, "--workers", "2", "--quiet", "--summary", str(tmp_path / "rerun.json")])
    summary = json.loads((tmp_path / "rerun.json").read_text())
    assert rc == 0 and (summary["skipped"], summary["done"], summary["frames"]) == (3, 0, 0)
    assert summary["workers"] == [] and summary["startup"] == {}  # not even a worker started
    assert [(f.read_bytes(), f.stat().st_mtime_ns) for f in files] == before


class CrashOnce:
    """A worker's predictor that ends its own process (os._exit, as the OOM killer would) before
    inferring a batch once `after` frames are done, the first time only (`marker` file)."""

    def __init__(self, spec: PredictorSpec, after: int, marker: str):
        self.spec, self.after, self.marker = spec, after, marker

    def __call__(self):
        predict, close = self.spec()
        inferred = [0]

        def crashing(frames):
            if inferred[0] >= self.after and not os.path.exists(self.marker):
                Path(self.marker).touch()
                os._exit(1)
            inferred[0] += len(frames)
            return predict(frames)

        return crashing, close


def test_a_worker_killed_mid_video_leaves_complete_output(cluster, videos, lite_onnx, reference, tmp_path, capsys):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    marker = tmp_path / "crashed"
    make = CrashOnce(PredictorSpec(model=str(lite_onnx)), after=2 * BATCH, marker=str(marker))
    out = tmp_path / "out"
    summary = run_videos_on_ray([str(videos / f"{n}.mp4") for n in CLIPS], out, make,
                                RayConfig(workers=1, gpus_per_worker=1), batch_size=BATCH)
    assert marker.exists()  # it did die, mid-way through alpha (after 8 of 12 frames)
    [worker] = summary.workers
    assert worker["restarts"] == 1 and worker["gpu_ids"] == ["0"]
    assert all(r.done and not r.error for r in summary.reports)
    lines = [json.loads(line)["frame"] for line in (out / "alpha" / JSONL).read_text().splitlines()]
    assert lines == list(range(NUM_FRAMES))  # every frame once, in order
    assert_same_outputs(out, reference)
    printed = capsys.readouterr().out
    assert "retry    alpha.mp4: worker 0 died" in printed
    assert all(f"done     {n}.mp4" in printed for n in CLIPS)


DRIVER = """
import sys, time
from boxinst_serve.apps.video.ray import PredictorSpec, RayConfig, run_videos_on_ray

class Slow:
    '''The model plus 0.3 s a batch: a 12-frame clip takes over a second.'''
    def __init__(self, spec):
        self.spec = spec

    def __call__(self):
        predict, close = self.spec()

        def slow(frames):
            time.sleep(0.3)
            return predict(frames)

        return slow, close

videos, out, model, address = sys.argv[1:5]
run_videos_on_ray(videos, out, Slow(PredictorSpec(model=model)), RayConfig(address=address, workers=1),
                  batch_size=4, progress=False)
"""


def test_a_killed_driver_run_again_finishes_the_rest(cluster, videos, lite_onnx, reference, tmp_path):
    listing = tmp_path / "videos.txt"  # a list file this time
    listing.write_text("".join(f"{videos / n}.mp4\n" for n in CLIPS))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(listing), str(out), str(lite_onnx), cluster], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / CLIPS[0] / DONE
    deadline = time.monotonic() + 180
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    stderr = proc.communicate(timeout=60)[1].decode(errors="replace")
    assert first.exists(), f"the driver finished no video: {stderr[-2000:]}"
    unfinished = [n for n in CLIPS if not (out / n / DONE).exists()]
    assert unfinished, "the driver was killed after the last video"
    summary = run_videos_on_ray(str(listing), out, PredictorSpec(model=str(lite_onnx)), RayConfig(workers=1),
                                batch_size=BATCH, progress=False).to_dict()
    assert (summary["skipped"], summary["done"], summary["failed"]) == (len(CLIPS) - len(unfinished),
                                                                       len(unfinished), 0)
    assert_same_outputs(out, reference)


def test_video_lock_waits_then_names_the_folder(tmp_path):
    with video_lock(tmp_path, timeout_s=1):
        t0 = time.monotonic()
        with pytest.raises(VideoLocked, match=LOCK):
            with video_lock(tmp_path, timeout_s=0.5):
                pass
        assert time.monotonic() - t0 >= 0.5
    with video_lock(tmp_path, timeout_s=0):  # released when its holder left
        pass


def test_with_a_checkpoint_and_default_flags_ray_gives_the_same_detections(cluster, videos, trained_lite, tmp_path):
    """The guarantee with the defaults a user gets (a .pt checkpoint, default batch and threads):
    the same detections as `boxinst video`, within float rounding (a worker's torch runs with the
    threads Ray gives it, the single process with all cores: sums in another order), not byte for
    byte. Byte-equality holds where the threads are the same: the .onnx runs above."""
    from tests.parity import assert_records_close

    single, on_ray = tmp_path / "single", tmp_path / "ray"
    sources = [str(videos / f"{n}.mp4") for n in CLIPS]
    assert main(["video", *sources, "--out", str(single), "--model", str(trained_lite), "--quiet"]) == 0
    assert main(["video", *sources, "--out", str(on_ray), "--model", str(trained_lite), "--ray", cluster,
                 "--workers", "2", "--quiet"]) == 0
    compared = sum(assert_records_close(read_jsonl(on_ray / n / JSONL), read_jsonl(single / n / JSONL))
                   for n in CLIPS)
    assert compared > 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_workers_that_do_not_fit_the_cluster_are_an_error(cluster, videos, lite_onnx, tmp_path):
    with pytest.raises(ValueError, match=r"needs 2 GPU\(s\); the Ray cluster has 1"):
        run_videos_on_ray(str(videos / "alpha.mp4"), tmp_path, PredictorSpec(model=str(lite_onnx)),
                          RayConfig(workers=2, gpus_per_worker=1), progress=False)


def test_bench_compares_the_single_process_with_ray_workers(cluster, videos, lite_onnx, capsys):
    assert main(["bench", "--video", str(videos / "alpha.mp4"), "--checkpoint", str(lite_onnx), "--ray-workers", "1",
                 "--repeats", "1", "--batch-sizes", str(BATCH), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["path"], r["workers"]) for r in result["rows"]] == [("boxinst video", 0), ("boxinst video --ray", 1)]
    assert all(r["frames"] == NUM_FRAMES and r["wall_s"] > 0 for r in result["rows"])
    # The Ray row's outputs were compared with the single process's (the reference, compared with nothing).
    assert result["rows"][0]["identical"] is None and result["rows"][1]["identical"] is True
    assert result["rows"][1]["startup_s"] > 0


class _Loaded(Exception):
    """Raised by the fake load_engine once it has recorded how it was called."""


def test_default_flags_give_each_worker_the_single_process_threads(monkeypatch, tmp_path):
    """The byte-for-byte guarantee rests on this: with the CLI's defaults a --ray worker loads a .onnx
    model with the same ONNX Runtime threads as `boxinst video` without --ray (its default: no
    --threads), whatever --cpus-per-worker reserves. No Ray and no model: the calls are recorded."""
    import boxinst_serve.apps.video.ray as ray_app
    import boxinst_serve.engines as engines

    model = tmp_path / "model.onnx"
    model.write_bytes(b"")
    loads = []

    def fake_load_engine(path, device="cpu", **kwargs):
        loads.append((str(path), device, kwargs))
        raise _Loaded

    specs = []

    def fake_run_videos_on_ray(sources, out, spec, cfg, **kwargs):
        specs.append(spec)
        raise _Loaded

    monkeypatch.setattr(engines, "load_engine", fake_load_engine)
    monkeypatch.setattr(ray_app, "run_videos_on_ray", fake_run_videos_on_ray)
    common = ["video", str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "out"), "--model", str(model), "--quiet"]
    with pytest.raises(_Loaded):
        main(common)  # the single process
    with pytest.raises(_Loaded):
        main([*common, "--ray", "--workers", "2", "--cpus-per-worker", "1"])
    [spec] = specs
    with pytest.raises(_Loaded):
        spec()  # what each worker does first
    single, worker = loads
    assert worker == single and single[2] == {"engine": "auto"}  # no threads: ONNX Runtime's default in both
    # --threads N reaches both alike.
    loads.clear(), specs.clear()
    with pytest.raises(_Loaded):
        main([*common, "--threads", "3"])
    with pytest.raises(_Loaded):
        main([*common, "--threads", "3", "--ray"])
    with pytest.raises(_Loaded):
        specs[0]()
    assert loads[0] == loads[1] and loads[0][2] == {"threads": 3, "engine": "auto"}


def test_a_worker_still_restarting_is_asked_again_then_retired_at_the_deadline(monkeypatch):
    """A dead worker's restart can take seconds on a loaded machine; until then its info() fails
    with ActorUnavailableError ("The actor is restarting"). The driver asks again rather than
    retiring it (which failed every video of a 1-worker run), until --start-timeout after the death.
    No Ray: the driver's handler is called with fakes."""
    from collections import deque

    from boxinst_serve.apps.video import ray as ray_app

    class Actor:
        class info:  # noqa: N801 (Ray's actor.method.remote() shape)
            @staticmethod
            def remote():
                return "asked again"

    run = ray_app._Run([], None, RayConfig(workers=1, start_timeout_s=60), {}, False, None, {}, 0)
    run.actors, run.stats = [Actor()], [{}]
    run.restart_deadline[0] = time.monotonic() + 60
    s = ray_app._Schedule(queue=deque(), idle=set(), pinned={0: "alpha"}, probing={"first ask": 0})

    def restarting(ref):
        raise ray.exceptions.ActorUnavailableError("The actor is restarting.", None)

    monkeypatch.setattr(ray, "get", restarting)
    run._on_restarted("first ask", s)
    assert s.probing == {"asked again": 0} and s.pinned == {0: "alpha"} and not s.idle and not s.queue
    run.restart_deadline[0] = time.monotonic() - 1  # past --start-timeout: retired, its video queued again
    run._on_restarted("asked again", s)
    assert not s.probing and not s.pinned and list(s.queue) == ["alpha"] and not s.idle
