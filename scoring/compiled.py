"""Which of the model's modules run compiled (mypyc), and a guard against stale extensions.

setup.py compiles ``COMPILED_MODULES`` and records the digest of each source it
compiled. At import, ``scoring/__init__.py`` calls ``guard``: if a source no
longer matches its extension (edited after an editable install) or
HEALTHSCORE_PURE_PYTHON is set, all of them are imported from source instead.
All or none: compiled modules call each other directly, so a mix would run the
stale code anyway.
"""

from __future__ import annotations

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


def is_compiled() -> bool:
    return status == "compiled"
