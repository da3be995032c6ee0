#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine (Python 3.11,
# OpenJDK 17 and Maven expected; the rest is installed): Debian's redis-server,
# kcat and prometheus, a virtualenv with the project, and Apache Kafka's jars
# from Maven Central. Safe to run again: it only does what is missing.
# --with-image: also podman, runc and debootstrap, to build and run the container image
# (scripts/image-build.sh; the test suite's image test needs them).
set -euo pipefail
cd "$(dirname "$0")/.."
with_image=false
[ "${1:-}" = "--with-image" ] && with_image=true

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3

need=()
# A C compiler and Python's headers: setup.py compiles the model with mypyc (pure Python without them).
command -v gcc >/dev/null || need+=(gcc libc6-dev)
"$python" -c "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
  || need+=("$(basename "$(readlink -f "$(command -v "$python")")")-dev")
command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || need+=(redis-server)
command -v kcat >/dev/null || need+=(kcat)
# curl and jq: the README's OAUTHBEARER token command is tested as written.
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
# column (util-linux's, in bsdextrautils): scripts/demo.sh prints its closing list with it.
command -v column >/dev/null || need+=(bsdextrautils)
command -v prometheus >/dev/null || need+=(prometheus)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if $with_image; then
  command -v podman >/dev/null || need+=(podman)
  command -v runc >/dev/null || [ -x /usr/sbin/runc ] || need+=(runc)
  command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
fi
if ((${#need[@]})); then
  echo "Installing Debian packages: ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts a system redis on install; the project runs its own on the same port.
  if [[ " ${need[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null; then
    $sudo_cmd systemctl stop redis-server >/dev/null 2>&1 || true
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv with $python"
  "$python" -m venv .venv
fi
# The Rust kernel (native/) is built by the same install where cargo is (rustup's default place too).
[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"
kernel_stamp=.venv/.kernel-$(cat native/Cargo.toml native/Cargo.lock native/src/*.rs | sha256sum | cut -c1-16)
stamp=.venv/.installed-$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "Installing the project and its dependencies into .venv"
  .venv/bin/pip install -q --upgrade pip
  # The build's warnings go to a log; shown when the install fails.
  .venv/bin/pip install -q -e ".[test]" 2>.venv/install.log || { cat .venv/install.log >&2; exit 1; }
  rm -f .venv/.installed-* .venv/.kernel-*
  touch "$stamp" "$kernel_stamp"
fi

# The model's compiled modules (setup.py): rebuilt when a source changed since they were built.
model=$(.venv/bin/python -c "import scoring.compiled as c; print(c.status)" 2>/dev/null)
if [[ "$model" == *"changed since it was compiled"* ]]; then
  echo "Recompiling the model (a source in scoring/ changed)"
  .venv/bin/pip install -q --no-deps -e . 2>.venv/install.log || { cat .venv/install.log >&2; exit 1; }
  model=$(.venv/bin/python -c "import scoring.compiled as c; print(c.status)")
fi
echo "Model: $model"

if command -v cargo >/dev/null; then
  if [ ! -f "$kernel_stamp" ]; then
    echo "Rebuilding the Rust kernel (native/ changed)"
    .venv/bin/pip install -q --no-deps -e . 2>.venv/install.log || { cat .venv/install.log >&2; exit 1; }
    rm -f .venv/.kernel-*
    touch "$kernel_stamp"
  fi
  echo "Kernel: $(.venv/bin/python -c 'from scoring import kernel; print("built" if kernel.available() else "NOT built (see .venv/install.log)")')"
elif [ "${CI:-}" = "true" ]; then
  echo "No Rust toolchain (cargo) on PATH: install Rust 1.82 or newer (rustup: https://rustup.rs) so the" >&2
  echo "Rust kernel is built; under CI=true its byte-equality tests may not be skipped." >&2
  exit 1
else
  echo "Kernel: not built (no cargo on PATH: install Rust 1.82+ with rustup); the worker runs the Python model, slower"
fi

.venv/bin/python -c "from stream.services.local import resolve_kafka_jars; resolve_kafka_jars()"
echo "Setup complete."
