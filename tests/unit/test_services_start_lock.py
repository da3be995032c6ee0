"""Two processes starting the same local service at once (two test processes, two shells):
the second waits until the first is done (stream/services/local.py ``one_start_at_a_time``),
then finds the service answering; before, it formatted Kafka's data directory under the
running broker and failed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from stream.services.local import one_start_at_a_time

CHILD = """
import sys
from pathlib import Path
from stream.services.local import one_start_at_a_time
with one_start_at_a_time(Path(sys.argv[1])):
    Path(sys.argv[2]).write_text("started")
"""


def test_a_second_start_waits_for_the_first(tmp_path: Path) -> None:
    started = tmp_path / "second-started"
    with one_start_at_a_time(tmp_path / "kafka"):
        second = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "kafka"), str(started)], cwd=Path(__file__).resolve().parents[2])
        time.sleep(1.0)  # time for the second to get as far as the lock (it cannot get past it)
        assert not started.exists() and second.poll() is None
    assert second.wait(timeout=30) == 0
    assert started.read_text() == "started"
