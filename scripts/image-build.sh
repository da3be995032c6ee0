#!/usr/bin/env bash
# Builds the container image with podman on this machine, and runs `healthscore version` in it.
#   bash scripts/image-build.sh [TAG]            (default localhost/healthscore:dev)
#
# The wheels (the project's, with the model compiled by mypyc and the Rust kernel, and every
# dependency's) are built on the host into .image-wheels/, and the Dockerfile's run stage
# installs them with --no-index (WHEELS=host): no compiler and no rustup in the image build.
# The project's wheel takes the extensions scripts/setup.sh's editable install compiled, when
# they are up to date with the sources (else it compiles them again).
# The base is python:3.11-slim-bookworm when the registry can be reached, else (or with
# BASE_IMAGE=debian) a Debian bookworm made here by debootstrap with Debian's python3 and
# python3-venv, imported as localhost/healthscore-base:bookworm-python and kept in podman's
# storage for the next build. Podman runs with the runc runtime (crun refuses this kind of
# machine's cgroup layout) and ulimits of 1024 (podman's defaults are above what a container
# may set here: "setrlimit ... Operation not permitted").
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-localhost/healthscore:dev}"
bash scripts/setup.sh --with-image >/dev/null
mkdir -p .data
podman=(podman --runtime runc)
limits=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
slim=docker.io/library/python:3.11-slim-bookworm
local_base=localhost/healthscore-base:bookworm-python

mirror() {
  # The Debian mirror apt uses here, else Debian's.
  local found
  found=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
    | grep -oE 'https?://[^ ]+' | head -1 || true)
  echo "${found:-http://deb.debian.org/debian}"
}

base="${BASE_IMAGE:-}"
if [ -z "$base" ]; then
  # A base made here earlier means the registry was out of reach then: not asked again (a pull
  # that cannot connect can take its whole minute). `podman rmi` it to try the registry again.
  if "${podman[@]}" image exists "$slim"; then
    base="$slim"
  elif ! "${podman[@]}" image exists "$local_base" && timeout 60 "${podman[@]}" pull -q "$slim" >/dev/null 2>&1; then
    base="$slim"
  fi
fi
if [ -z "$base" ] || [ "$base" = debian ]; then
  base="$local_base"
  if ! "${podman[@]}" image exists "$base"; then
    rootfs=.data/image/rootfs
    rm -rf "$rootfs" && mkdir -p .data/image
    echo "Making a Debian bookworm base with debootstrap ($(mirror)), about a minute"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$(mirror)" >.data/image/debootstrap.log 2>&1 \
      || { tail -20 .data/image/debootstrap.log >&2; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "${podman[@]}" import - "$base" >/dev/null
    rm -rf "$rootfs"
  fi
fi

echo "Building the wheels on the host into .image-wheels/"
# project/: this project's wheel, made anew each time. deps/: every dependency's, kept between
# builds (pip leaves a wheel already there as it is), so that podman's cached layer of the
# dependencies stays valid while they do not change.
mkdir -p .image-wheels/project .image-wheels/deps
rm -f .image-wheels/*.whl .image-wheels/project/*.whl
# The extensions the editable install built here, copied (setup.py, HEALTHSCORE_PREBUILT_EXTENSIONS);
# compiled again when one of them is stale.
if ! HEALTHSCORE_PREBUILT_EXTENSIONS=1 .venv/bin/pip wheel --quiet --no-deps --wheel-dir .image-wheels/project . 2>.data/image-wheel.log; then
  echo "  ($(grep -o 'HEALTHSCORE_PREBUILT_EXTENSIONS: .*' .data/image-wheel.log | head -1 || echo 'could not reuse the built extensions'); compiling)"
  .venv/bin/pip wheel --quiet --no-deps --wheel-dir .image-wheels/project . 2>.data/image-wheel.log || { cat .data/image-wheel.log >&2; exit 1; }
fi
.venv/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" >.data/image-requirements.txt
cmp -s .data/image-requirements.txt .image-wheels/deps/requirements.txt || cp .data/image-requirements.txt .image-wheels/deps/requirements.txt
.venv/bin/pip wheel --quiet --wheel-dir .image-wheels/deps -r .image-wheels/deps/requirements.txt

echo "Building $tag from $base"
"${podman[@]}" build --quiet "${limits[@]}" --network host --build-arg BASE_IMAGE="$base" --build-arg WHEELS=host -t "$tag" . >/dev/null
"${podman[@]}" image prune -f >/dev/null  # the wheels stage left untagged: the layers stay cached
"${podman[@]}" run --rm "${limits[@]}" "$tag" version
