"""How long `healthscore replay` takes, with the due-time index and with the full scan (run on
demand, not in the test suite).

    .venv/bin/python bench/replay.py                     # both cases below
    .venv/bin/python bench/replay.py --case cdnow-sized

Cases:
- ``cdnow-sized``: a purchase CSV the size of the public CDNOW master history (23,570
  customers, 49,086 purchases over 272 days; the customers' first purchases within the first
  12 weeks, repeat purchases few and skewed), made here with a fixed seed;
- ``generated-1m``: `healthscore generate`'s mix, 1,000,000 events over 100,000 customers and
  365 days.

Each is replayed with the daily sweep twice, ``sweep_due_index`` on and off; the two outputs
must be byte for byte the same (the script stops otherwise). With the due index on, the replay
runs in the Rust kernel where it is built (the summary's "steps"); ``--python-model`` replays
a third time with ``native_kernel = false`` (the Python model, the kernel's reference), which
must give the same bytes too. The times are the command's wall time, reading and writing included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stream.commands.generate import write_history  # noqa: E402
from throughput import write_result  # noqa: E402

DAY_MS = 86_400_000
END_MS = 1_790_000_000_000


def cdnow_sized(path: Path, customers: int = 23_570, purchases: int = 49_086, days: int = 272, seed: int = 3) -> None:
    rng = random.Random(seed)
    start = END_MS - days * DAY_MS
    first = {f"c{index:05d}": start + rng.randrange(84 * DAY_MS) for index in range(customers)}
    propensity = {customer: rng.gammavariate(0.3, 1.0) for customer in first}
    names = list(first)
    weights = [propensity[name] for name in names]
    rows = [(first[name], name) for name in names]
    for name in rng.choices(names, weights, k=purchases - customers):
        rows.append((first[name] + rng.randrange(END_MS - first[name]), name))
    rows.sort()
    with open(path, "w") as out:
        out.write("customer_id,occurred_at,amount\n")
        for at, name in rows:
            out.write(f"{name},{at},{round(rng.uniform(5, 80), 2)}\n")


def generated(path: Path) -> None:
    write_history(str(path), str(path) + ".labels.csv", customers=100_000, events=1_000_000, start_ms=END_MS - 365 * DAY_MS, end_ms=END_MS, seed=11)


def replay(input_path: Path, output: Path, due_index: bool, native_kernel: bool = True) -> tuple[float, dict]:
    env = {
        **os.environ, "HEALTHSCORE_SWEEP_DUE_INDEX": "true" if due_index else "false",
        "HEALTHSCORE_NATIVE_KERNEL": "true" if native_kernel else "false",
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "stream.cli", "replay", "--input", str(input_path), "--output", str(output)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )
    seconds = time.perf_counter() - started
    return seconds, json.loads(done.stderr.strip().splitlines()[-1])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["cdnow-sized", "generated-1m"], action="append", help="(repeatable; default both)")
    parser.add_argument("--index-only", action="store_true", help="skip the full scan (at 100,000 customers it rescores each one every day: tens of minutes)")
    parser.add_argument("--python-model", action="store_true", help="also replay with the due index in the Python model (native_kernel = false)")
    args = parser.parse_args()
    runs = [("due_index", True, True)]
    if args.python_model:
        runs.append(("due_index_python_model", True, False))
    if not args.index_only:
        runs.append(("full_scan", False, True))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for case in args.case or ["cdnow-sized", "generated-1m"]:
            source = Path(folder) / (f"{case}.csv" if case == "cdnow-sized" else f"{case}.jsonl")
            print(f"{case}: writing the history...")
            (cdnow_sized if case == "cdnow-sized" else generated)(source)
            row: dict = {"case": case}
            outputs = {}
            for label, due_index, native_kernel in runs:
                output = Path(folder) / f"{case}-{label}.jsonl"
                seconds, summary = replay(source, output, due_index, native_kernel)
                row[label] = {"seconds": seconds, "summary": summary, "output_lines": sum(1 for _ in open(output, "rb"))}
                outputs[label] = digest(output)
                print(f"  {label}: {seconds:.1f} s, {row[label]['output_lines']} lines, {json.dumps(summary)}")
            for label, output_digest in outputs.items():
                if output_digest != outputs["due_index"]:
                    raise SystemExit(f"{case}: the {label} output differs from the due index's")
            row["identical_output"] = len(outputs) > 1
            rows.append(row)
    write_result("replay", {"rows": rows})


if __name__ == "__main__":
    main()
