"""``healthscore replay``: history through the worker's own pipeline, to JSON Lines."""

from __future__ import annotations

import math

import sys
import time
from pathlib import Path
from typing import IO

import msgspec

import scoring.compiled
from scoring import kernel

from scoring.output import alert_line, rfc3339, score_line
from scoring.replay import AlertLine, AlertRaised, KernelReplayer, Replayer, ScoreChanged, ScoreLine
from stream.commands.history import History, budgeted, read_history, write_rejects
from stream.memory import collect_garbage_rarely
from stream.settings import Settings


def progress_bar(total: int | None, unit: str, description: str):
    """A tqdm bar on stderr when it is a terminal; silent otherwise (logs stay clean)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=description, disable=None, file=sys.stderr, mininterval=0.5, unit_scale=True)


def run_replay(
    settings: Settings,
    input_path: Path,
    output: IO[bytes],
    as_of_ms: int | None,
    sweep_every_seconds: float | None,
    rejects_path: Path | None,
    echo,
) -> dict:
    started = time.perf_counter()
    parameters = settings.model_parameters()
    model_version = parameters.model_version
    every = sweep_every_seconds if sweep_every_seconds is not None else settings.replay_sweep_interval_seconds
    native = kernel.build_where_possible(parameters, settings.alerts.parameters(), settings.native_kernel)
    in_kernel = native is not None and settings.sweep_due_index
    history = _read(input_path, rejects_path, echo, keep_lines=in_kernel)
    # The history (a million events are millions of objects) lives until the end.
    collect_garbage_rarely()
    min_change = math.inf if settings.replay_sweep_scores == "band_changes" else settings.sweep_min_score_change
    encoder = msgspec.json.Encoder()
    buffer = bytearray()
    replayer: Replayer
    if in_kernel:  # score lines go straight to the buffer; alerts pass the fleet budget
        replayer = KernelReplayer(
            parameters, settings.alerts.parameters(), settings.dedup_capacity, int(every * 1000) or None, native, min_change,
            settings.state_ttl_ms, score_lines=buffer,
        )
        events: list = list(zip(history.events, history.lines or ()))
    else:
        replayer = Replayer(
            parameters, settings.alerts.parameters(), settings.dedup_capacity, int(every * 1000) or None, min_change,
            settings.state_ttl_ms, settings.sweep_due_index, native,
        )
        events = history.events
    scores, alerts = _replay_lines(replayer, settings, events, as_of_ms, model_version, buffer, output)
    finals = _final_lines(replayer, as_of_ms, model_version, encoder, buffer) if as_of_ms is not None else 0
    output.write(buffer)
    output.flush()
    seconds = time.perf_counter() - started
    summary = {
        "lines_read": history.read,
        "rejected": len(history.rejected),
        "events": len(history.events),
        **{outcome.value: count for outcome, count in replayer.outcomes.items()},
        "customers": replayer.customer_count(),
        "sweeps": replayer.sweeps,
        "scores": scores,
        "alerts": alerts,
        "final_scores": finals,
        "seconds": round(seconds, 2),
        "model": scoring.compiled.status,
        "due_search": ("Rust kernel" if replayer.native_due_search else "Python model") if replayer.due_index else "off (every customer swept)",
        # Where each event's step and each sweep's rescoring ran (the kernel needs the due index).
        "steps": "Rust kernel" if in_kernel else "Python model",
        # Steps and visits the kernel could not take (an event or a record it cannot read): the Python model's.
        "kernel_fallbacks": replayer.in_python if isinstance(replayer, KernelReplayer) else 0,
        "events_per_second": round(sum(replayer.outcomes.values()) / seconds) if seconds else None,
    }
    return summary


def _read(input_path: Path, rejects_path: Path | None, echo, keep_lines: bool = False) -> History:
    """The history's events, with a progress bar; rejected lines said, and written to ``rejects_path``."""
    with progress_bar(None, " events", "reading") as bar:
        history = read_history(input_path, progress=lambda n: bar.update(n - bar.n), keep_lines=keep_lines)
        bar.update(len(history.events) - bar.n)
    if history.rejected:
        first = history.rejected[0]
        echo(f"{len(history.rejected)} of {history.read} lines rejected (first: line {first.line}: {first.reason}: {first.detail})")
        if rejects_path is not None:
            write_rejects(rejects_path, history.rejected)
            echo(f"Rejected lines written to {rejects_path}")
    return history


def _replay_lines(
    replayer: Replayer, settings: Settings, events: list, as_of_ms: int | None, model_version: str, buffer: bytearray, output: IO[bytes]
) -> tuple[int, int]:
    """Writes a line per changed score and per alert; returns how many of each."""
    scores = alerts = 0
    with progress_bar(len(events), " events", "replaying") as bar:
        applied_before = since_update = 0
        for item in budgeted(replayer.run(events, until_ms=as_of_ms), settings):
            if isinstance(item, ScoreLine):  # written by the kernel (empty: KernelReplayer's WRITE_NOW)
                scores += 1 if item.line else 0
                buffer += item.line
            elif isinstance(item, AlertLine):
                alerts += 1
                buffer += item.line
            elif isinstance(item, ScoreChanged):
                scores += 1
                buffer += score_line(item.customer_id, item.health, item.trigger_event_id, model_version)
            elif isinstance(item, AlertRaised):
                alerts += 1
                buffer += alert_line(item.alert, model_version)
            if len(buffer) >= 1 << 20:
                output.write(buffer)
                buffer.clear()
            since_update += 1
            if since_update >= 10_000 or not buffer:
                since_update = 0
                applied = sum(replayer.outcomes.values())
                bar.update(applied - applied_before)
                applied_before = applied
        bar.update(sum(replayer.outcomes.values()) - applied_before)
    if isinstance(replayer, KernelReplayer):
        scores += replayer.scores
    return scores, alerts


def _final_lines(replayer: Replayer, as_of_ms: int, model_version: str, encoder: msgspec.json.Encoder, buffer: bytearray) -> int:
    """A line per customer with its final score at ``as_of_ms``; returns how many."""
    finals = 0
    for final in replayer.final_scores(as_of_ms):
        finals += 1
        buffer += encoder.encode(
            {
                "kind": "final",
                "customer_id": final.customer_id,
                "score": final.health.score,
                "band": final.health.band,
                "churn_risk": final.health.churn_risk,
                "confidence": round(final.health.confidence, 4),
                "as_of": rfc3339(as_of_ms),
                "model_version": model_version,
            }
        ) + b"\n"
    return finals
