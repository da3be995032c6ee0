"""setup.py's HEALTHSCORE_PREBUILT_EXTENSIONS (the image's wheel takes the extensions the editable
install built) takes them only while they are what the sources give: a compiled source edited
since, a kernel source newer than the kernel, or a missing extension sends the build back to
compiling (scripts/image-build.sh)."""

from __future__ import annotations

import importlib.machinery
import os
from pathlib import Path

from scoring.compiled import COMPILED_MODULES, prebuilt_extension_files, source_digest

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def built_tree(root: Path) -> Path:
    scoring = root / "scoring"
    (root / "native" / "src").mkdir(parents=True)
    (root / "native" / "target" / "release").mkdir(parents=True)
    scoring.mkdir()
    (root / "native" / "src" / "lib.rs").write_text("// kernel\n")
    for name in COMPILED_MODULES:
        (scoring / f"{name}.py").write_text(f"# {name}\n")
        (scoring / f"{name}{SUFFIX}").write_bytes(b"\x7fELF")
    digests = {name: source_digest(scoring / f"{name}.py") for name in COMPILED_MODULES}
    (scoring / "_compiled_sources.py").write_text(f"DIGESTS = {digests!r}\n")
    (root / f"0123abcd__mypyc{SUFFIX}").write_bytes(b"\x7fELF")
    kernel = scoring / f"_kernel{SUFFIX}"
    kernel.write_bytes(b"\x7fELF")
    later = (root / "native" / "src" / "lib.rs").stat().st_mtime + 10
    os.utime(kernel, (later, later))
    return root


def test_an_up_to_date_tree_gives_every_extension(tmp_path: Path) -> None:
    found = prebuilt_extension_files(built_tree(tmp_path))
    assert not isinstance(found, str), found
    names = {name for name, _path in found}
    assert names == {"scoring._kernel", "0123abcd__mypyc", *(f"scoring.{name}" for name in COMPILED_MODULES)}
    assert all(path.exists() for _name, path in found)


def test_an_edited_compiled_source_is_refused(tmp_path: Path) -> None:
    root = built_tree(tmp_path)
    (root / "scoring" / "health.py").write_text("# edited\n")
    assert prebuilt_extension_files(root) == "scoring/health.py changed since it was compiled"


def test_a_kernel_source_newer_than_the_kernel_is_refused_but_not_cargos_own_files(tmp_path: Path) -> None:
    root = built_tree(tmp_path)
    kernel_time = (root / "scoring" / f"_kernel{SUFFIX}").stat().st_mtime
    build_output = root / "native" / "target" / "release" / "libkernel.so"
    build_output.write_bytes(b"")
    os.utime(build_output, (kernel_time + 5, kernel_time + 5))
    assert not isinstance(prebuilt_extension_files(root), str)
    source = root / "native" / "src" / "lib.rs"
    os.utime(source, (kernel_time + 5, kernel_time + 5))
    assert prebuilt_extension_files(root) == "native/src/lib.rs is newer than the built kernel"


def test_a_missing_extension_or_manifest_is_refused(tmp_path: Path) -> None:
    root = built_tree(tmp_path)
    (root / "scoring" / f"due{SUFFIX}").unlink()
    assert prebuilt_extension_files(root) == f"not built here: due{SUFFIX}"
    other = built_tree(tmp_path / "other")
    (other / "scoring" / "_compiled_sources.py").unlink()
    assert prebuilt_extension_files(other) == "scoring/state.py changed since it was compiled"
