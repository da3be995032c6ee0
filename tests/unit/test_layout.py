"""The house rules of stream/ and scoring/: each package imports only what its docstring
allows (nothing climbs back up from the plumbing to the assembly), and no function is
longer than a screen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = {"stream.settings", "stream.metrics", "stream.memory"}

#: What each package of stream/ may import from stream/ besides itself (its __init__.py says so too).
ALLOWED = {
    "kafka": {"stream.settings", "stream.metrics"},
    "state": {"stream.kafka", *SHARED},
    "sinks": SHARED,
    "processing": {"stream.kafka", "stream.state", "stream.sinks", *SHARED},
    "worker": {"stream.kafka", "stream.state", "stream.sinks", "stream.processing", *SHARED},
    "commands": {"stream.kafka", *SHARED},
    "services": SHARED,
    "delivery": {"stream.kafka", "stream.state", *SHARED},
    "ingest": {"stream.kafka", *SHARED},
}

#: "About 80 lines": the longest a function may be.
LONGEST_FUNCTION = 80


def stream_imports(path: Path) -> set[str]:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            if node.module == "stream":  # from stream import metrics
                imported.update(f"stream.{alias.name}" for alias in node.names)
    return {name for name in imported if name.startswith("stream.")}


def test_every_package_of_stream_is_checked_and_says_what_it_holds() -> None:
    packages = {path.parent.name for path in (ROOT / "stream").glob("*/__init__.py")}
    assert packages == set(ALLOWED)
    for package in packages:
        assert ast.get_docstring(ast.parse((ROOT / "stream" / package / "__init__.py").read_text())), package


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_it_may(package: str) -> None:
    allowed = ALLOWED[package] | {f"stream.{package}"}
    for path in sorted((ROOT / "stream" / package).glob("*.py")):
        for name in stream_imports(path):
            assert any(name == a or name.startswith(a + ".") for a in allowed), f"{path.relative_to(ROOT)} imports {name}"


def test_no_function_is_longer_than_a_screen() -> None:
    too_long = []
    for folder in ("stream", "scoring"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                    if length > LONGEST_FUNCTION:
                        too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not too_long
