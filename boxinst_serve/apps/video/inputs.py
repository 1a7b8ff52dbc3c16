"""Which videos a `boxinst video` run processes and where each one's outputs go: one plan,
shared by the single-process path and the Ray path (`--ray`), so both read the same inputs and
write the same folders.

Sources (any mix, in the order given):
- a video file (any suffix: a file given by name is tried even if it is not a video, and reported
  by name if it cannot be opened);
- a folder: its video files (by suffix, sorted; not recursive);
- a glob such as `clips/*.mp4` or `footage/**/*.mov` (recursive `**`): its video files, sorted;
- a list file (`.txt`, `.lst`, `.list`): one source per line (a file, folder or glob; not another
  list), blank lines and lines starting with `#` ignored, relative paths taken from the list
  file's folder.

Paths are made absolute (`os.path.abspath`, links kept) and a file named twice is processed once.
On a cluster the same absolute paths must reach the same files on every node (shared storage).

Output folders: OUT/<stem>; OUT/<name> where two videos share a stem; OUT/<path relative to the
videos' common folder, separators as "__"> where two also share a name.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
                  ".mts", ".3gp", ".ogv"}
LIST_SUFFIXES = {".txt", ".lst", ".list"}
DONE = "done.json"  # a video's folder holds it once the video is finished (boxinst_serve.apps.video.pipeline writes it)
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class VideoTask:
    """One video of a run: its file and its output folder (both absolute paths)."""
    video: str
    out_dir: str

    @property
    def done(self) -> bool:
        return (Path(self.out_dir) / DONE).exists()


def _videos_in(folder: Path) -> list[Path]:
    return sorted(q for q in folder.iterdir() if q.is_file() and q.suffix.lower() in VIDEO_SUFFIXES)


def _expand(source: str, base: Path | None, in_list: str | None) -> list[Path]:
    """One source -> its files (absolute, not yet de-duplicated)."""
    where = f" (line of {in_list})" if in_list else ""
    path = Path(source) if base is None or Path(source).is_absolute() else base / source
    if path.is_dir():
        return [Path(os.path.abspath(p)) for p in _videos_in(path)]
    if path.is_file():
        if path.suffix.lower() in LIST_SUFFIXES:
            if in_list:
                raise ValueError(f"list file '{path}' is named inside another list file ({in_list}): not supported")
            return read_list(path)
        return [Path(os.path.abspath(path))]
    if _GLOB_CHARS & set(str(source)):
        matches = sorted(Path(os.path.abspath(m)) for m in glob.glob(str(path), recursive=True))
        videos = [m for m in matches if m.is_file() and m.suffix.lower() in VIDEO_SUFFIXES]
        if not videos:
            raise FileNotFoundError(f"no video files match '{source}'{where}")
        return videos
    raise FileNotFoundError(f"video '{path}' does not exist{where}")


def read_list(path: str | os.PathLike) -> list[Path]:
    """The files named by a list file, one source per line (see the module docstring)."""
    path = Path(path)
    out: list[Path] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out += _expand(line, path.parent, str(path))
    return out


def collect_video_files(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Sources (files, folders, globs, list files) -> absolute file paths, in order, each once.
    Raises FileNotFoundError naming a source that is missing or matches nothing."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    seen: set[Path] = set()
    files: list[Path] = []
    for source in sources:
        for p in _expand(str(source), None, None):
            if p not in seen:
                seen.add(p)
                files.append(p)
    return files


def output_dirs(paths: Sequence[Path], out: str | os.PathLike) -> list[Path]:
    """OUT/<stem>; OUT/<name> where stems clash; a relative-path name where names clash too."""
    out = Path(os.path.abspath(out))
    stems = [p.stem for p in paths]
    names = [p.name for p in paths]
    root = Path(os.path.commonpath([str(p.parent) for p in paths])) if paths else Path("/")
    dirs = []
    for p in paths:
        if stems.count(p.stem) == 1:
            dirs.append(out / p.stem)
        elif names.count(p.name) == 1:
            dirs.append(out / p.name)
        else:
            dirs.append(out / "__".join(p.relative_to(root).parts))
    return dirs


def plan_videos(sources: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike) -> list[VideoTask]:
    """The run's videos and output folders, in input order. Raises FileNotFoundError if there are none."""
    paths = collect_video_files(sources)
    if not paths:
        shown = sources if isinstance(sources, (str, os.PathLike)) else " ".join(map(str, sources))
        raise FileNotFoundError(f"no video files in '{shown}' (suffixes: {', '.join(sorted(VIDEO_SUFFIXES))})")
    return [VideoTask(str(p), str(d)) for p, d in zip(paths, output_dirs(paths, out))]
