"""The house (issue: package layout): the library imports none of the apps or commands, old
exported repositories keep importing, and the client stays light.

Library modules are imported each in a fresh interpreter and sys.modules is checked; an AST scan
also catches imports inside functions, which an import alone does not run."""
from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "boxinst_serve"
NOT_LIBRARY = ("boxinst_serve.apps", "boxinst_serve.cli")
FORBIDDEN = NOT_LIBRARY + ("training", "export")

# The boxinst_serve import lines of a repository exported after the served-parity issue (commit
# e815952: model_repository/*/1/model.py and export/triton/*.py), frozen: repositories on users'
# disks hold these copies, so they must import whatever the layout becomes.
EXPORTED_IMPORT_LINES = """
from boxinst_serve.postprocess import instances_for
from boxinst_serve.serving import ServingConfig, instance_outputs, mask_format_of, meta_from_array, respond_each
from boxinst_serve.preprocess import decode_image
from boxinst_serve.serving import (ServingConfig, max_pixels_parameter, meta_to_array, model_parameters, prepare_one,
                                   respond_each)
from boxinst_serve.frames import check_frame
from boxinst_serve.config import OUTPUT_NAMES
from boxinst_serve.engines.onnxruntime_engine import OnnxRuntimeEngine
from boxinst_serve.serving import model_parameters, onnxruntime_settings
from boxinst_serve.fused import FramePipeline
from boxinst_serve.serving import (instance_outputs, mask_format_of, max_pixels_parameter, model_parameters,
                                   onnxruntime_settings, respond_each)
"""


def within(name: str, packages: tuple[str, ...]) -> bool:
    """name is one of `packages` or inside one ('boxinst_serve.client' is not inside 'boxinst_serve.cli')."""
    return any(name == p or name.startswith(p + ".") for p in packages)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> list[Path]:
    """Every module of boxinst_serve outside apps/ and cli/ (the engines for optional runtimes too)."""
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if not within(module_name(p), NOT_LIBRARY) and "__pycache__" not in p.parts)


def imported_names(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_library_modules_name_no_app_command_training_or_export():
    offenders = {module_name(p): sorted(n for n in imported_names(p) if within(n, FORBIDDEN))
                 for p in library_modules()}
    assert len(offenders) > 20
    assert {m: n for m, n in offenders.items() if n} == {}


def _loaded_after_import(module: str) -> list[str]:
    prefixes = tuple(p + "." for p in FORBIDDEN)
    code = (f"import sys; import {module}; "
            f"print('\\n'.join(m for m in sys.modules if m in {FORBIDDEN!r} or m.startswith({prefixes!r})))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    if run.returncode:
        return [f"import failed: {run.stderr.strip().splitlines()[-1]}"]
    return run.stdout.split()


def test_each_library_module_in_a_fresh_interpreter_loads_no_app_or_command():
    optional = {"boxinst_serve.engines.tensorrt_engine"}  # imports tensorrt, absent here (a clear ImportError)
    modules = [module_name(p) for p in library_modules() if module_name(p) not in optional]
    with ThreadPoolExecutor(4) as pool:
        loaded = dict(zip(modules, pool.map(_loaded_after_import, modules)))
    assert {m: v for m, v in loaded.items() if v} == {}


def test_import_lines_of_repositories_exported_before_the_layout_still_work():
    code = "import sys; sys.modules['triton_python_backend_utils'] = object()\n" + EXPORTED_IMPORT_LINES
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr


def test_import_lines_of_todays_repository_files_work():
    lines = []
    for path in sorted(ROOT.glob("model_repository/*/1/model.py")) + sorted(ROOT.glob("export/triton/*.py")):
        src = path.read_text()
        lines += [ast.get_source_segment(src, n) for n in ast.walk(ast.parse(src))
                  if isinstance(n, (ast.Import, ast.ImportFrom)) and "boxinst_serve" in ast.get_source_segment(src, n)]
    assert len(lines) >= 10
    run = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr


def test_public_names_load_lazily_and_resolve():
    code = ("import sys, boxinst_serve as bs\n"
            "assert 'torch' not in sys.modules and 'cv2' not in sys.modules, 'eager import'\n"
            "assert bs.BoxInstClient.__module__.startswith('boxinst_serve.client') and 'torch' not in sys.modules\n"
            "names = [getattr(bs, n) for n in bs.__all__]\n"
            "assert bs.Predictor.__name__ == 'Predictor' and callable(bs.load_engine)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
