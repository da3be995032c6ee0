#!/usr/bin/env bash
# The whole test suite: installs what is missing (podman too: the image is built and run,
# tests/integration/test_image.py), then runs pytest. The integration tests start the
# project's own Kafka and Redis (idempotently).
#
# Two processes (pytest-xdist): the integration tests all run on one, in order (they share the
# services and wait on real workers: tests/conftest.py groups them), while the unit and stream
# tests run on the other. Arguments go to pytest; `-n 0` runs everything in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-image
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
