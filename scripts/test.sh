#!/usr/bin/env bash
# The whole test suite: installs what is missing (podman too: the image is built and run,
# tests/integration/test_image.py), then runs pytest. The integration tests start the
# project's own Kafka and Redis (idempotently).
#
# Without arguments, two pytest processes side by side: tests/integration in order in one
# (its tests share the services they start and wait on real workers), tests/unit and
# tests/stream in the other, whose report follows. Fails if either fails. With arguments,
# one pytest with them (for example `bash scripts/test.sh tests/unit -k kernel`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-image
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
mkdir -p .data
pure_log=.data/pure-tests.log
.venv/bin/python -m pytest -p no:cacheprovider tests/unit tests/stream >"$pure_log" 2>&1 &
pure=$!
integration_status=0
.venv/bin/python -m pytest tests/integration || integration_status=$?
pure_status=0
wait "$pure" || pure_status=$?
echo
echo "=== tests/unit and tests/stream, run beside the integration tests ($pure_log) ==="
cat "$pure_log"
if [ "$integration_status" -ne 0 ] || [ "$pure_status" -ne 0 ]; then
  echo "FAILED: tests/integration exit $integration_status, tests/unit and tests/stream exit $pure_status" >&2
  exit 1
fi
