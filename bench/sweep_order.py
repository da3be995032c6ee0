"""What walking a partition's keys a chunk at a time costs the sweep (run on demand).

    .venv/bin/python bench/sweep_order.py --customers 200000 --chunk 500

The sweep rescores a partition's customers a chunk per tick, in key order. Before
2026-12-06 each tick sorted the partition's whole key set to find its chunk (quadratic in
the customers); now the keys are sorted once per sweep (stream/processing/sweep.py). This
times both walks over the same keys, without Kafka or the model (the rescoring itself is
bench/sweep.py), and checks they visit the same keys in the same order.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from scoring.alerts import AlertParameters
from scoring.health import ScoringParameters
from stream.processing.sweep import Sweeper
from stream.settings import load_settings


def walk_sorting_every_chunk(keys: set[bytes], chunk_size: int) -> list[bytes]:
    """The walk as it was: every tick sorts the keys after the last one swept."""
    visited: list[bytes] = []
    after = b""
    while True:
        pending = sorted(key for key in keys if key > after)
        chunk = pending[:chunk_size]
        visited += chunk
        if len(pending) <= len(chunk):
            return visited
        after = chunk[-1]


def walk_sorting_once(keys: set[bytes], chunk_size: int) -> list[bytes]:
    sweeper = Sweeper(load_settings(sweep_chunk_size=chunk_size), ScoringParameters(), AlertParameters(), {0: keys}, None, None, lambda: 0.0)  # type: ignore[arg-type]
    visited: list[bytes] = []
    after: bytes | None = b""
    while after is not None:
        chunk, after = sweeper._chunk(0, 1, after)
        visited += chunk
    return visited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=200_000, help="keys in the one partition")
    parser.add_argument("--chunk", type=int, default=500, help="sweep_chunk_size")
    args = parser.parse_args()
    rng = random.Random(7)
    keys = {f"cust-{rng.getrandbits(48):012x}".encode() for _ in range(args.customers)}
    figures = {"customers": len(keys), "chunk": args.chunk}
    for name, walk in (("sorted_once", walk_sorting_once), ("sorted_every_chunk", walk_sorting_every_chunk)):
        started = time.perf_counter()
        visited = walk(keys, args.chunk)
        figures[f"{name}_seconds"] = round(time.perf_counter() - started, 3)
        assert visited == sorted(keys)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
