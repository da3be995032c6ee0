"""Under CI=true a skip fails the run (tests/conftest.py): a machine without the Rust kernel or
the compiled model cannot turn the byte-equality tests into silent skips."""

from __future__ import annotations

import pytest

from tests.conftest import __file__ as SUITE_CONFTEST

INNER = """
import pytest

@pytest.mark.skipif(True, reason="the Rust kernel is not built")
def test_needs_the_kernel():
    pass

def test_skips_at_run_time():
    pytest.skip("no cargo on PATH")

def test_runs():
    pass
"""


@pytest.mark.parametrize(("ci", "failed"), [("true", 2), ("", 0)])
def test_a_skip_fails_under_ci_only(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, failed: int) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest(open(SUITE_CONFTEST).read().replace('pytest_plugins = ["pytester"]', ""))
    pytester.makepyfile(INNER)
    result = pytester.runpytest("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 1
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == failed
    assert outcomes.get("skipped", 0) == 2 - failed
    if failed:
        result.stdout.fnmatch_lines(["*skipped under CI=true, which allows no skip*the Rust kernel is not built*"])
