#!/usr/bin/env bash
# The Dockerfile's build and install steps, run here without Docker (this machine has no
# engine): the wheel built from a clean export of HEAD with mypyc and the Rust kernel, then
# installed from the wheels alone (--no-index, as the run stage does) into a fresh virtual
# environment, which must report the compiled model and the Rust kernel. It checks what the
# image would contain, not the image itself. Usage: scripts/image-dry-run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git archive HEAD pyproject.toml setup.py README.md scoring stream native config | tar -x -C "$work"
echo "building the wheel (mypyc, cargo) in $work ..."
python3.11 -m pip wheel --quiet --no-cache-dir --wheel-dir "$work/wheels" "$work"
python3.11 -m venv "$work/run"
"$work/run/bin/pip" install --quiet --no-cache-dir --no-index --only-binary :all: --find-links "$work/wheels" healthscore
cd "$work"  # not this checkout: the installed package alone
export HEALTHSCORE_CONFIG="$OLDPWD/config/healthscore.toml"
reported="$("$work/run/bin/healthscore" version)"
echo "$reported"
grep -q "compiled, Rust kernel built" <<<"$reported"
echo "ok: the image's wheel installs without compilers and runs the compiled model and the Rust kernel"
