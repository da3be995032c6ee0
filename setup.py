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

With HEALTHSCORE_PREBUILT_EXTENSIONS=1 nothing is compiled: the extensions an editable
install built in this tree are copied into the wheel, after checking that every compiled
source still has the digest it was compiled from and that nothing in native/ is newer than
the kernel. scripts/image-build.sh builds the image's wheel that way (the compile took a
minute of the image test on a fresh clone), and builds it in full when the check refuses.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scoring.compiled import COMPILED_MODULES, MANIFEST, prebuilt_extension_files, source_digest  # noqa: E402


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


class CopyPrebuilt(build_ext):
    """build_ext that copies each extension from where the editable install built it."""

    def build_extension(self, ext: Extension) -> None:
        built = Path(__file__).resolve().parent / ext.sources[0]
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(built), str(target))


def prebuilt_extensions() -> list[Extension]:
    """The extensions built in this tree, as they are (SystemExit when one is stale or missing)."""
    root = Path(__file__).resolve().parent
    found = prebuilt_extension_files(root)
    if isinstance(found, str):
        raise SystemExit(f"HEALTHSCORE_PREBUILT_EXTENSIONS: {found}")
    return [Extension(name, sources=[str(path.relative_to(root))]) for name, path in found]


if os.environ.get("HEALTHSCORE_PREBUILT_EXTENSIONS"):
    setup(ext_modules=prebuilt_extensions(), cmdclass={"build_ext": CopyPrebuilt})
else:
    setup(ext_modules=compiled_extensions(), rust_extensions=rust_extensions())
