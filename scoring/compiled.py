"""Which of the model's modules run compiled (mypyc), and a guard against stale extensions.

setup.py compiles ``COMPILED_MODULES`` and records the digest of each source it
compiled. At import, ``scoring/__init__.py`` calls ``guard``: if a source no
longer matches its extension (edited after an editable install) or
HEALTHSCORE_PURE_PYTHON is set, all of them are imported from source instead.
All or none: compiled modules call each other directly, so a mix would run the
stale code anyway.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
from pathlib import Path

#: The modules every event goes through; they must not declare msgspec structs (see scoring.structs).
COMPILED_MODULES = ("state", "health", "alerts", "pipeline", "replay", "output", "kpis", "fleet_sums", "due")
MANIFEST = "scoring/_compiled_sources.py"
PURE_PYTHON_VARIABLE = "HEALTHSCORE_PURE_PYTHON"
_PACKAGE_DIR = Path(__file__).resolve().parent
_log = logging.getLogger(__name__)


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _has_extension(name: str) -> bool:
    return any((_PACKAGE_DIR / f"{name}{suffix}").exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _stale_modules() -> list[str]:
    try:
        from scoring._compiled_sources import DIGESTS  # type: ignore[import-not-found]
    except ImportError:
        DIGESTS = {}
    return [name for name in COMPILED_MODULES if DIGESTS.get(name) != source_digest(_PACKAGE_DIR / f"{name}.py")]


class _SourceFinder:
    """Imports the compiled modules from their .py files (ahead of the extension finder)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        package, _, name = fullname.rpartition(".")
        if package != "scoring" or name not in COMPILED_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, _PACKAGE_DIR / f"{name}.py")


#: "compiled", "pure Python (…reason…)": what this process runs, for `healthscore version` and benchmarks.
status = "pure Python (not compiled)"


def guard() -> None:
    global status
    if not all(_has_extension(name) for name in COMPILED_MODULES):
        status = (
            "pure Python (not compiled: no C compiler, HEALTHSCORE_PURE_PYTHON at install, or mypyc failed; "
            "`pip install -v -e .` shows why)"
        )
        return
    if os.environ.get(PURE_PYTHON_VARIABLE):
        reason = f"{PURE_PYTHON_VARIABLE} is set"
    elif stale := _stale_modules():
        reason = f"scoring/{stale[0]}.py changed since it was compiled; run `bash scripts/setup.sh` to recompile"
        _log.warning("Using the pure-Python model (slower): %s", reason)
    else:
        status = "compiled"
        return
    status = f"pure Python ({reason})"
    if not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder())


def prebuilt_extension_files(root: Path) -> list[tuple[str, Path]] | str:
    """(module name, file) of every extension an install built in the source tree ``root`` (the
    compiled modules, mypyc's shared library, the Rust kernel), or why they cannot be taken as
    they are: one missing, a compiled source edited since (its digest), a file of native/ newer
    than the kernel. For setup.py's HEALTHSCORE_PREBUILT_EXTENSIONS (the image's wheel)."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    scoring = root / "scoring"
    manifest = scoring / "_compiled_sources.py"
    compiled: dict = {}
    if manifest.exists():  # read as data, not run: ``DIGESTS = {...}``
        for node in ast.parse(manifest.read_text()).body:
            if isinstance(node, ast.Assign) and any(isinstance(target, ast.Name) and target.id == "DIGESTS" for target in node.targets):
                compiled = ast.literal_eval(node.value)
    kernel = scoring / f"_kernel{suffix}"
    shared = sorted(root.glob(f"*__mypyc{suffix}"))
    files = [("scoring._kernel", kernel), *((f"scoring.{name}", scoring / f"{name}{suffix}") for name in COMPILED_MODULES)]
    missing = [path.name for _name, path in files if not path.exists()]
    if missing or len(shared) != 1:
        return f"not built here: {(missing or [f'{len(shared)} mypyc libraries'])[0]}"
    stale = [name for name in COMPILED_MODULES if compiled.get(name) != source_digest(scoring / f"{name}.py")]
    if stale:
        return f"scoring/{stale[0]}.py changed since it was compiled"
    built_at = kernel.stat().st_mtime
    for folder, subfolders, names in os.walk(root / "native"):
        subfolders[:] = [name for name in subfolders if name != "target"]
        newer = [name for name in names if os.stat(os.path.join(folder, name)).st_mtime > built_at]
        if newer:
            return f"{Path(folder, newer[0]).relative_to(root)} is newer than the built kernel"
    return [*files, (shared[0].name[: -len(suffix)], shared[0])]


def is_compiled() -> bool:
    return status == "compiled"
