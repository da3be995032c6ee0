"""Is a change faster? Interleaved worker-only runs of two revisions (run on demand).

    .venv/bin/python bench/compare.py HEAD~1               # HEAD~1 against the working tree
    .venv/bin/python bench/compare.py main my-branch --rounds 5

The machine this project is measured on is a shared VM whose speed drifts by 10-30 %
within minutes, so two runs made one after the other say little about a change of a
few percent. This script alternates the two versions (A, B, A, B, ...), each run
being ``bench/throughput.py --skip-peers --latency-rate 0 --workers 1`` (the plain
consumer and the worker, on fresh topics), and reports each pair's ratio, how many
pairs B won, the median ratio and the CPU time per run: judge a change by those,
not by one pair.

Each revision is exported with ``git archive`` into a temporary directory and its
model compiled there the way an install does (``pip wheel``, mypyc); when its
``scoring/`` is the same as this checkout's, the extensions built here are copied
instead. The working tree (``.``) is used as it is, uncommitted changes included.
Kafka and Redis are started once, here, if they are not running. The table goes to
the screen and, as JSON, to bench/results/compare-*.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scoring.compiled import COMPILED_MODULES, MANIFEST  # noqa: E402
from stream.services.local import default_paths, start_kafka, start_redis  # noqa: E402

WORKING_TREE = "."


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def _compiled_files(tree: Path) -> list[Path]:
    """The built extensions in a tree: scoring/*.so, mypyc's shared library at the top, the manifest."""
    return [*tree.glob("scoring/*.so"), *tree.glob("*__mypyc*.so"), tree / MANIFEST]


def _same_model(revision: str) -> bool:
    paths = [f"scoring/{name}.py" for name in COMPILED_MODULES] + ["scoring/structs.py", "scoring/contract.py"]
    return subprocess.run(["git", "diff", "--quiet", revision, "--", *paths], cwd=ROOT).returncode == 0


def export(revision: str, label: str, into: Path) -> Path:
    """A runnable copy of ``revision`` with its model compiled."""
    tree = into / f"{label}-{git('rev-parse', '--short', revision)}"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    (tree / ".data").mkdir()
    here = _compiled_files(ROOT)
    if _same_model(revision) and all(path.exists() for path in here):
        for path in here:
            (tree / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            (tree / path.relative_to(ROOT)).write_bytes(path.read_bytes())
        return tree
    print(f"Compiling the model of {revision} (about a minute)...", flush=True)
    wheels = into / f"wheel-{tree.name}"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(tree)],
        check=True,
    )
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive_file:
        for name in archive_file.namelist():
            if name.endswith(".so") or name == MANIFEST:
                archive_file.extract(name, tree)
    return tree


def model_status(tree: Path) -> str:
    """``compiled``, or why the tree's model would run as pure Python (scoring.compiled)."""
    probe = "import scoring, scoring.compiled as c; print(c.status)"
    return subprocess.run([sys.executable, "-c", probe], cwd=tree, check=True, capture_output=True, text=True).stdout.strip()


def run_once(tree: Path, events: int, customers: int) -> dict:
    """One worker-only run of bench/throughput.py in ``tree``; the worker's row of its JSON."""
    command = [
        sys.executable, "bench/throughput.py", "--events", str(events), "--customers", str(customers),
        "--skip-peers", "--latency-rate", "0", "--workers", "1",
    ]  # fmt: skip
    finished = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    written = [line for line in finished.stdout.splitlines() if line.startswith("written to ")]
    if finished.returncode != 0 or not written:
        raise SystemExit(f"the run in {tree} failed:\n{finished.stdout[-3000:]}\n{finished.stderr[-3000:]}")
    result = json.loads(Path(written[-1].removeprefix("written to ")).read_text())
    (worker,) = [row for row in result["rows"] if row["name"].startswith("healthscore worker")]
    return {"events_per_second": worker["events_per_second"], "cpu_seconds": worker["cpu_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", help="revision A (anything git understands)")
    parser.add_argument("candidate", nargs="?", default=WORKING_TREE, help="revision B (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs (default 3)")
    parser.add_argument("--events", type=int, default=200_000, help="events per run (default 200000)")
    parser.add_argument("--customers", type=int, default=10_000)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for revision in (args.base, args.candidate):
        if revision != WORKING_TREE and subprocess.run(
            ["git", "rev-parse", "--quiet", "--verify", f"{revision}^{{commit}}"], cwd=ROOT, capture_output=True
        ).returncode:
            parser.error(f"{revision!r} is not a revision of this repository")

    paths = default_paths()
    start_redis(paths)
    start_kafka(paths)
    with tempfile.TemporaryDirectory(prefix="healthscore-compare-") as scratch:
        trees = {
            label: ROOT if revision == WORKING_TREE else export(revision, label, Path(scratch))
            for label, revision in (("A", args.base), ("B", args.candidate))
        }
        statuses = {label: model_status(tree) for label, tree in trees.items()}
        for label, revision in (("A", args.base), ("B", args.candidate)):
            print(f"{label}: {revision} ({trees[label]}), model {statuses[label]}")
        if len(set(statuses.values())) > 1:
            raise SystemExit("A and B would not both run the compiled model (run scripts/setup.sh after editing scoring/)")
        pairs: list[dict] = []
        for round_number in range(1, args.rounds + 1):
            pair = {label: run_once(tree, args.events, args.customers) for label, tree in trees.items()}
            pair["ratio"] = pair["B"]["events_per_second"] / pair["A"]["events_per_second"]
            pairs.append(pair)
            print(
                f"pair {round_number}/{args.rounds}: A {pair['A']['events_per_second']:,.0f} events/s "
                f"(CPU {pair['A']['cpu_seconds']:.1f} s), B {pair['B']['events_per_second']:,.0f} events/s "
                f"(CPU {pair['B']['cpu_seconds']:.1f} s): B/A {pair['ratio']:.3f}",
                flush=True,
            )

    ratios = [pair["ratio"] for pair in pairs]
    summary = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "base": args.base,
        "base_commit": git("rev-parse", args.base),
        "candidate": args.candidate,
        "candidate_commit": (
            git("rev-parse", "HEAD") + " + working tree" if args.candidate == WORKING_TREE else git("rev-parse", args.candidate)
        ),
        "model": statuses["A"],
        "events": args.events,
        "customers": args.customers,
        "pairs": pairs,
        "candidate_faster_in": sum(ratio > 1 for ratio in ratios),
        "median_ratio": statistics.median(ratios),
        "median_cpu_seconds": {
            label: statistics.median(pair[label]["cpu_seconds"] for pair in pairs) for label in ("A", "B")
        },
    }
    print(
        f"\nB faster in {summary['candidate_faster_in']} of {len(pairs)} pairs; median B/A {summary['median_ratio']:.3f} "
        f"(from {min(ratios):.3f} to {max(ratios):.3f}); median CPU per run A {summary['median_cpu_seconds']['A']:.1f} s, "
        f"B {summary['median_cpu_seconds']['B']:.1f} s"
    )
    out = ROOT / "bench" / "results" / f"compare-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
