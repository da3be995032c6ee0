"""The model's compiled modules (mypyc): active in a normal install, the same results as pure Python,
never a stale extension in place of an edited source."""

from __future__ import annotations

import ast
import json
import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import scoring.compiled
from scoring.compiled import COMPILED_MODULES, PURE_PYTHON_VARIABLE

ROOT = Path(__file__).resolve().parents[2]
SCORING = ROOT / "scoring"
needs_compiled = pytest.mark.skipif(not scoring.compiled.is_compiled(), reason=f"the model runs as {scoring.compiled.status}")


def _environment(**extra: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key != PURE_PYTHON_VARIABLE}
    environment.update(extra)
    return environment


@pytest.mark.skipif(bool(os.environ.get(PURE_PYTHON_VARIABLE)), reason=f"{PURE_PYTHON_VARIABLE} is set")
def test_the_model_runs_compiled_in_a_normal_install() -> None:
    # scripts/setup.sh installs with a C compiler present: the published speed figures are for this.
    assert scoring.compiled.is_compiled(), scoring.compiled.status
    from scoring import health

    assert health.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@pytest.mark.parametrize("name", COMPILED_MODULES)
def test_compiled_modules_declare_no_msgspec_struct(name: str) -> None:
    # mypyc cannot compile classes with a metaclass: their class options would be lost.
    tree = ast.parse((SCORING / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(base) for base in node.bases]
            assert not any("Struct" in base for base in bases), f"{name}.py declares {node.name}({', '.join(bases)})"


@needs_compiled
def test_compiled_and_pure_python_replays_are_byte_identical(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    cli = [sys.executable, "-m", "stream.cli"]
    subprocess.run(
        [*cli, "generate", "--customers", "60", "--events", "4000", "--history-days", "60", "--output", str(history)],
        check=True, capture_output=True, env=_environment(), cwd=ROOT,
    )
    last_event_ms = max(json.loads(line)["occurred_at"] for line in history.read_text().splitlines())
    as_of = str(last_event_ms + 3 * 86_400_000)  # epoch ms
    outputs = {}
    for mode, environment in (("compiled", _environment()), ("pure", _environment(**{PURE_PYTHON_VARIABLE: "1"}))):
        output = tmp_path / f"{mode}.jsonl"
        done = subprocess.run(
            [*cli, "replay", "--input", str(history), "--output", str(output), "--as-of", as_of],
            check=True, capture_output=True, text=True, env=environment, cwd=ROOT,
        )
        assert (f'"model": "{mode}' if mode == "compiled" else '"model": "pure Python') in done.stderr
        outputs[mode] = output.read_bytes()
    assert outputs["compiled"].count(b'"kind":"score"') > 1000
    assert outputs["compiled"] == outputs["pure"]


@needs_compiled
def test_an_edited_source_is_not_shadowed_by_its_stale_extension(tmp_path: Path) -> None:
    copy = tmp_path / "scoring"
    shutil.copytree(SCORING, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for shared in ROOT.glob("*__mypyc*"):  # mypyc's shared library of the compiled modules
        shutil.copy(shared, tmp_path)
    with open(copy / "health.py", "a") as source:
        source.write("\nEDITED = True\n")
    probe = "import scoring.compiled, scoring.health; print(scoring.compiled.status); print(scoring.health.EDITED)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True,
        env=_environment(PYTHONPATH=str(tmp_path)), cwd=tmp_path,
    )
    status, edited = done.stdout.splitlines()
    assert status.startswith("pure Python (scoring/health.py changed since it was compiled")
    assert edited == "True"
    assert "Using the pure-Python model" in done.stderr
