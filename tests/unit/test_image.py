"""The Dockerfile, checked as text: a build stage with the compilers, a run stage without
them that installs from wheels alone (from the build stage or the host), not root, the config
read from /etc/healthscore, and the model compiled with the Rust kernel or no image at all.
The image itself is built and run with podman in tests/integration/test_image.py."""

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
    """Each stage's instructions (the ARGs before the first FROM left out)."""
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(DOCKERFILE):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def build_and_run() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    every = stages()
    return every[0], every[-1]


def test_the_image_is_built_in_one_stage_and_run_from_another_without_compilers() -> None:
    build, run = build_and_run()
    assert ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm") in instructions(DOCKERFILE)
    assert build[0] == ("FROM", "${BASE_IMAGE} AS build")
    build_text = " ".join(rest for _, rest in build)
    assert "gcc" in build_text and "rustup" in build_text and "pip wheel" in build_text
    assert ("COPY", "native ./native") in build
    run_text = " ".join(rest for _, rest in run)
    assert run[0] == ("FROM", "${BASE_IMAGE}")
    assert "gcc" not in run_text and "cargo" not in run_text and "rustup" not in run_text
    # The dependencies' layer before the project's, so that a change to the project alone
    # reinstalls only its wheel.
    copies = [rest for keyword, rest in run if keyword == "COPY" and rest.startswith("--from=wheels")]
    assert copies == ["--from=wheels /wheels/deps /wheels/deps", "--from=wheels /wheels/project /wheels/project"]
    installs = [rest for keyword, rest in run if keyword == "RUN" and "pip install" in rest]
    assert len(installs) == 2 and all("--no-index" in rest for rest in installs)
    assert "requirements.txt" in installs[0] and "/wheels/project/" in installs[1] and "pip check" in installs[1]
    # The wheels come from the build stage (the default) or from the host's .image-wheels/.
    assert ("ARG", "WHEELS=build") in instructions(DOCKERFILE)
    assert ("FROM", "wheels-${WHEELS} AS wheels") in instructions(DOCKERFILE)
    assert ("COPY", ".image-wheels/ /wheels/") in instructions(DOCKERFILE)


def test_the_worker_runs_as_an_unprivileged_user_with_its_config_in_etc() -> None:
    _, run = build_and_run()
    users = [rest for keyword, rest in run if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    env = " ".join(rest for keyword, rest in run if keyword == "ENV")
    assert "HEALTHSCORE_CONFIG=/etc/healthscore/healthscore.toml" in env
    assert "HEALTHSCORE_DATA_DIR=/var/lib/healthscore" in env
    assert ("COPY", "config/healthscore.toml /etc/healthscore/healthscore.toml") in run
    # The user exists and owns the data directory before the switch to it.
    assert any("useradd" in rest and "10001" in rest and "/var/lib/healthscore" in rest for _, rest in run)


def test_no_image_without_the_compiled_model_and_the_rust_kernel() -> None:
    _, run = build_and_run()
    checks = [rest for keyword, rest in run if keyword == "RUN" and "healthscore version" in rest]
    assert checks and 'grep -q "compiled, Rust kernel built"' in checks[-1]
    assert run[-2:] == [("ENTRYPOINT", '["healthscore"]'), ("CMD", '["worker"]')]


def test_the_build_context_leaves_out_local_builds_and_data() -> None:
    ignored = set((PROJECT_ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".data", ".git", "native/target", "**/*.so"} <= ignored
