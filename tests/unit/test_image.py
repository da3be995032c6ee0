"""The Dockerfile, checked offline (this machine has no Docker engine; see docs/deploy.md):
a build stage with the compilers, a run stage without them, not root, the config read from
/etc/healthscore, and the model compiled with the Rust kernel or no image at all."""

from __future__ import annotations

from stream.settings import PROJECT_ROOT

DOCKERFILE = (PROJECT_ROOT / "Dockerfile").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments left out."""
    joined = text.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), " ".join(rest.split())))
    return found


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(DOCKERFILE):
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, rest))
    return result


def test_the_image_is_built_in_one_stage_and_run_from_another_without_compilers() -> None:
    build, run = stages()
    assert build[0] == ("FROM", "python:3.11-slim-bookworm AS build")
    build_text = " ".join(rest for _, rest in build)
    assert "gcc" in build_text and "rustup" in build_text and "pip wheel" in build_text
    assert ("COPY", "native ./native") in build
    run_text = " ".join(rest for _, rest in run)
    assert run[0] == ("FROM", "python:3.11-slim-bookworm")
    assert "gcc" not in run_text and "cargo" not in run_text and "rustup" not in run_text
    assert ("COPY", "--from=build /wheels /wheels") in run


def test_the_worker_runs_as_an_unprivileged_user_with_its_config_in_etc() -> None:
    _, run = stages()
    users = [rest for keyword, rest in run if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = " ".join(rest for keyword, rest in run if keyword == "ENV")
    assert "HEALTHSCORE_CONFIG=/etc/healthscore/healthscore.toml" in env
    assert "HEALTHSCORE_DATA_DIR=/var/lib/healthscore" in env
    assert ("COPY", "config/healthscore.toml /etc/healthscore/healthscore.toml") in run
    # The user exists and owns the data directory before the switch to it.
    assert any("useradd" in rest and "10001" in rest and "/var/lib/healthscore" in rest for _, rest in run)


def test_no_image_without_the_compiled_model_and_the_rust_kernel() -> None:
    _, run = stages()
    checks = [rest for keyword, rest in run if keyword == "RUN" and "healthscore version" in rest]
    assert checks and 'grep -q "compiled, Rust kernel built"' in checks[-1]
    assert run[-2:] == [("ENTRYPOINT", '["healthscore"]'), ("CMD", '["worker"]')]


def test_the_build_context_leaves_out_local_builds_and_data() -> None:
    ignored = set((PROJECT_ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".data", ".git", "native/target", "**/*.so"} <= ignored
