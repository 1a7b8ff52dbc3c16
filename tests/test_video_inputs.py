"""Which videos a `boxinst video` run reads and where their outputs go (boxinst_serve.apps.video.inputs):
files, folders, globs and list files, each file once, output folder names that never clash."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from boxinst_serve.apps.video.inputs import DONE, collect_video_files, output_dirs, plan_videos


@pytest.fixture
def tree(tmp_path) -> Path:
    """a/x.mp4 a/y.avi a/notes.md b/x.mp4 b/deep/z.mkv (empty files: only names matter here)."""
    for name in ("a/x.mp4", "a/y.avi", "a/notes.md", "b/x.mp4", "b/deep/z.mkv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    return tmp_path


def test_folder_gives_its_videos_sorted_and_absolute(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert collect_video_files("a") == [tree / "a/x.mp4", tree / "a/y.avi"]


def test_files_folders_and_globs_mix_in_order_each_file_once(tree):
    files = collect_video_files([str(tree / "b/x.mp4"), str(tree / "a"), str(tree / "**/*.mkv"),
                                 str(tree / "a/x.mp4")])
    assert files == [tree / "b/x.mp4", tree / "a/x.mp4", tree / "a/y.avi", tree / "b/deep/z.mkv"]


def test_list_file_lines_are_relative_to_the_list(tree, monkeypatch):
    (tree / "lists").mkdir()
    (tree / "lists/videos.txt").write_text("# my clips\n\n../b/x.mp4\n../a/*.avi\n" + str(tree / "b/deep") + "\n")
    monkeypatch.chdir(tree / "a")
    assert collect_video_files(str(tree / "lists/videos.txt")) == [tree / "b/x.mp4", tree / "a/y.avi",
                                                                  tree / "b/deep/z.mkv"]


def test_missing_file_glob_without_match_and_nested_list_are_errors(tree):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        collect_video_files(str(tree / "nope.mp4"))
    with pytest.raises(FileNotFoundError, match=r"no video files match .*\*\.mov"):
        collect_video_files(str(tree / "*.mov"))
    (tree / "inner.txt").write_text("a\n")
    (tree / "outer.txt").write_text("inner.txt\n")
    with pytest.raises(ValueError, match="inside another list file"):
        collect_video_files(str(tree / "outer.txt"))
    (tree / "bad.txt").write_text("missing.mp4\n")
    with pytest.raises(FileNotFoundError, match=r"missing.mp4.*bad.txt"):
        collect_video_files(str(tree / "bad.txt"))


def test_output_dirs_use_stem_then_name_then_relative_path(tmp_path):
    paths = [Path("/v/a/clip.mp4"), Path("/v/a/clip.avi"), Path("/v/b/clip.avi"), Path("/v/a/solo.mp4")]
    assert output_dirs(paths, tmp_path) == [tmp_path / "clip.mp4", tmp_path / "a__clip.avi",
                                            tmp_path / "b__clip.avi", tmp_path / "solo"]


def test_plan_marks_videos_with_done_json(tree, tmp_path):
    out = tmp_path / "out"
    (out / "y").mkdir(parents=True)
    (out / "y" / DONE).write_text("{}")
    plan = plan_videos(str(tree / "a"), os.path.relpath(out))
    assert [(Path(t.video).name, Path(t.out_dir), t.done) for t in plan] == [("x.mp4", out / "x", False),
                                                                           ("y.avi", out / "y", True)]
    with pytest.raises(FileNotFoundError, match="no video files"):
        plan_videos(str(out), out)  # a folder without videos
