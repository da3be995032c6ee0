"""The on-demand benchmarks are not run by the suite, but each must at least start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(path.name for path in BENCH.glob("*.py"))


def test_there_are_benchmarks() -> None:
    assert {"throughput.py", "scale.py", "model_cost.py", "compare.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_explains_the_script(script: str) -> None:
    shown = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "usage:" in shown.stdout
