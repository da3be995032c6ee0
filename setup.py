"""Compiles the model's per-event modules to C extensions with mypyc (part of mypy).

Everything else about the package is in pyproject.toml. The compiled modules
run the same source, about a quarter faster: every event of the worker and
of a replay goes through them. When they cannot be built (no C compiler, or
HEALTHSCORE_PURE_PYTHON=1 at install time) the package installs as pure Python
and works the same, only slower; ``healthscore version`` says which one runs.

The Rust kernel (native/, ``scoring._kernel``) is built the same way when cargo is on
the PATH: optional (without it the worker runs the Python model), held equal to the
model by tests/unit/test_kernel.py.

Next to the extensions, ``scoring/_compiled_sources.py`` records a digest of
each compiled source, so that an edited module is never shadowed by a stale
extension (see ``scoring/__init__.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scoring.compiled import COMPILED_MODULES, MANIFEST, source_digest  # noqa: E402


def compiled_extensions() -> list:
    root = Path(__file__).resolve().parent
    manifest = root / MANIFEST
    if os.environ.get("HEALTHSCORE_PURE_PYTHON"):
        manifest.unlink(missing_ok=True)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # a build without the build requirements (--no-build-isolation)
        print("mypyc is not installed: installing scoring as pure Python", file=sys.stderr)
        manifest.unlink(missing_ok=True)
        return []
    digests = {name: source_digest(root / "scoring" / f"{name}.py") for name in COMPILED_MODULES}
    manifest.write_text(
        '"""Written by setup.py when it compiles these modules: the digest of each source it compiled."""\n\n'
        f"DIGESTS = {digests!r}\n"
    )
    try:
        extensions = mypycify([f"scoring/{name}.py" for name in COMPILED_MODULES], opt_level="3", debug_level="0")
    except SystemExit:  # mypyc found a type error: it printed it above
        print("mypyc could not compile scoring (type errors above): installing it as pure Python", file=sys.stderr)
        manifest.unlink(missing_ok=True)
        return []
    for extension in extensions:
        extension.optional = True  # no C compiler: pure Python, slower but the same results
    return extensions


def rust_extensions() -> list:
    """The kernel in native/, when a Rust toolchain is here (scripts/setup.sh checks it is)."""
    if os.environ.get("HEALTHSCORE_PURE_PYTHON"):
        return []
    try:
        from setuptools_rust import Binding, RustExtension
    except ImportError:  # a build without the build requirements (--no-build-isolation)
        print("setuptools-rust is not installed: building without the Rust kernel", file=sys.stderr)
        return []
    # debug=False: an editable install (pip install -e) would otherwise build it unoptimized.
    return [RustExtension("scoring._kernel", path="native/Cargo.toml", binding=Binding.PyO3, optional=True, debug=False)]


setup(ext_modules=compiled_extensions(), rust_extensions=rust_extensions())
