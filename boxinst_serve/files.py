"""Atomic file writing: a temporary file in the same folder, then a rename, so that a reader (or
a job resumed after a kill) never sees a half-written file."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = None) -> None:
    """Write `data` as json to `path` atomically (the folder is created if needed): compact, or
    indented by `indent` for files people read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":") if indent is None else (",", ": "), indent=indent)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_dir(work: str | os.PathLike, final: str | os.PathLike) -> None:
    """Swap the finished folder `work` in as `final` (a sibling), replacing what is there: the old
    folder is renamed aside first and removed last, so `final` is at every moment either the old
    folder or the new one, never a half-written one (a crash in between leaves `.NAME.old` beside it)."""
    work, final = Path(work), Path(final)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(work, final)
    shutil.rmtree(old, ignore_errors=True)
