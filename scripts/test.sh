#!/usr/bin/env bash
# The whole test suite: installs what is missing (podman too: the image is built and run,
# tests/integration/test_image.py), then runs pytest. The integration tests start the
# project's own Kafka and Redis (idempotently).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-image
exec .venv/bin/python -m pytest "$@"
