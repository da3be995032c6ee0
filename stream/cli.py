"""``healthscore``: one command, with a subcommand for each job."""

from __future__ import annotations

import asyncio
import os
import json
import logging
import math
import logging.config
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from stream.settings import Settings, SettingsError, load_settings


def _run_kafka(coroutine, settings: Settings):
    """Runs a coroutine that talks to Kafka; a broker that cannot be reached or refuses our
    credentials is one clear sentence naming the setting to fix, not a traceback."""
    from aiokafka.errors import KafkaError, UnknownTopicOrPartitionError

    from stream.kafka.clients import KafkaAccessError

    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # its retries would repeat what we say once
    try:
        return asyncio.run(coroutine)
    except UnknownTopicOrPartitionError:
        raise click.ClickException(
            f"a topic is missing on {settings.kafka.bootstrap}: create them with `healthscore topics`"
        ) from None
    except KafkaAccessError as error:
        raise click.ClickException(str(error)) from None
    except KafkaError as error:  # KafkaConnectionError among them
        _check_kafka(settings)  # says why, naming the setting
        raise click.ClickException(f"Kafka at {settings.kafka.bootstrap}: {type(error).__name__}: {error}") from None
    finally:
        client_log.setLevel(level)  # a worker started after this check logs its clients' errors


def _check_kafka(settings: Settings) -> None:
    """Stops with the reason unless the brokers accept a connection made as every client makes it."""
    from stream.kafka.clients import KafkaAccessError, check_access

    try:
        asyncio.run(check_access(settings.kafka))
    except KafkaAccessError as error:
        raise click.ClickException(str(error)) from None


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Real-time customer health scores on a Kafka event stream.

    Configuration comes from config/healthscore.toml (or the file named by
    HEALTHSCORE_CONFIG), overridden by HEALTHSCORE_* environment variables,
    e.g. HEALTHSCORE_KAFKA_BOOTSTRAP or HEALTHSCORE_TOPICS__PURCHASES.
    """


@main.command()
@click.option("--loglevel", default=None, help="Log level (default: log_level from the settings, 'info').")
def worker(loglevel: str | None) -> None:
    """Run the streaming worker: consume the four input topics, keep per-customer
    state, publish changed scores to the customer-health topic, write Redis, and
    serve /metrics on the web port (default 6066)."""
    import faust

    from stream.memory import tune_allocator
    from stream.worker.app import build_app
    from stream.worker.log_format import json_logging_config
    from stream.worker.quiet_outages import quiet_kafka_client_outages

    settings = _settings()
    _check_kafka(settings)  # Faust would retry a refused login or an unknown CA for ever
    _check_redis(settings)
    if not settings.topics.allow_runtime_creation:
        _refuse_missing_topics(settings)
    else:
        _create_missing_topics(settings)
    _check_erasures_readable(settings)
    tune_allocator()
    level = loglevel or settings.log_level
    if settings.log_format == "json":  # before build_app logs which model runs
        logging.config.dictConfig(json_logging_config(level))
    try:
        app = build_app(settings)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    quiet_kafka_client_outages(settings.log_repeat_interval_seconds)
    if settings.log_format == "json":  # and no banner: every line of output is a JSON object
        runner = faust.Worker(app, loglevel=level, redirect_stdouts=False, quiet=True, logging_config=json_logging_config(level))
    else:
        runner = faust.Worker(app, loglevel=level, redirect_stdouts=False)
    # Faust's startup spinner, shown at --loglevel warning and above, sets the root logger to
    # DEBUG so that every debug call spins it: a log record per message sent. Not here.
    runner.spinner = None
    runner.execute_from_commandline()


def _check_erasures_readable(settings: Settings) -> None:
    """Erased customers are recognised by their keyed hash: without privacy.hash_key a worker or
    a delivery process would let them back, so it does not start."""
    from stream.state.erased import erasures_without_key

    count = _run_kafka(erasures_without_key(settings), settings)
    if count:
        raise click.ClickException(
            f"{count} customer(s) were erased (topic {settings.topics.erasures}) but privacy.hash_key is not set: without it "
            "they cannot be recognised and would come back; set HEALTHSCORE_PRIVACY__HASH_KEY to the key `healthscore erase` used"
        )


def _check_redis(settings: Settings) -> None:
    """Stops with the reason when Redis refuses the worker; an unreachable one is only a warning."""
    from stream.sinks.redis_connection import RedisAccessError, check_redis

    try:
        warning = asyncio.run(check_redis(settings))
    except RedisAccessError as error:
        raise click.ClickException(str(error)) from None
    if warning:
        click.echo(f"Warning: {warning}", err=True)


def _create_missing_topics(settings: Settings) -> None:
    """What `healthscore topics` makes, where missing (a topic a newer version added, too);
    input topics that are not co-partitioned stop the start."""
    from stream.kafka.topics import TopicLayoutError, ensure_topics

    try:
        _run_kafka(ensure_topics(settings, echo=lambda line: None), settings)
    except TopicLayoutError as error:
        raise click.ClickException(str(error)) from None


def _require_topic(settings: Settings, topic: str) -> None:
    from stream.kafka.topics import partitions_of

    if not _run_kafka(partitions_of(settings.kafka, topic), settings):
        raise click.ClickException(f"topic {topic} is missing on {settings.kafka.bootstrap}: create the topics with `healthscore topics`")


def _refuse_missing_topics(settings: Settings) -> None:
    """With run-time creation off, a missing topic stops the start with its name."""
    from stream.kafka.topics import missing_topics

    missing = _run_kafka(missing_topics(settings), settings)
    if missing:
        raise click.ClickException(
            f"topics.allow_runtime_creation is false and these topics are missing on {settings.kafka.bootstrap}: "
            f"{', '.join(missing)}. Create them with `healthscore topics` (with CREATE permission), or have them created."
        )


@main.group()
def services() -> None:
    """Start, stop or check the local Kafka broker (KRaft) and Redis, no Docker needed."""


@services.command("start")
def services_start() -> None:
    """Start Kafka on 127.0.0.1:9092 and Redis on 127.0.0.1:6379 unless they already answer."""
    from stream.services.local import ServiceError, default_paths, start_kafka, start_redis

    paths = default_paths()
    try:
        start_redis(paths, echo=click.echo)
        start_kafka(paths, echo=click.echo)
    except ServiceError as error:
        raise click.ClickException(str(error)) from None


@services.command("stop")
def services_stop() -> None:
    """Stop the Kafka broker and Redis started by 'services start'."""
    from stream.services.local import default_paths, stop_all

    stop_all(default_paths(), echo=click.echo)


@services.command("status")
def services_status() -> None:
    """Say whether Kafka and Redis answer; exits 1 if either does not."""
    from stream.services.local import status

    state = status()
    for name, up in state.items():
        click.echo(f"{name}: {'up' if up else 'down'}")
    sys.exit(0 if all(state.values()) else 1)


@main.command()
@click.option(
    "--check", is_flag=True,
    help="Create nothing: say what differs from the settings on an existing cluster (missing topics, partition "
    "counts, replication, retention and the other configs we set) and exit 1 if anything does.",
)
def topics(check: bool) -> None:
    """Create every topic the worker needs (inputs, sweep, dead letters, outputs and the state
    changelog) with the configured partitions, replication ([topics] replication_factor) and
    configs, so that the worker can run without CREATE permission."""
    from stream.kafka.topics import TopicLayoutError, check_topics, ensure_topics

    settings = _settings()
    if check:
        problems = _run_kafka(check_topics(settings), settings)
        for problem in problems:
            click.echo(problem)
        if problems:
            raise click.ClickException(f"{len(problems)} difference(s) from the settings on {settings.kafka.bootstrap}")
        click.echo(f"All topics as configured on {settings.kafka.bootstrap}")
        return
    try:
        _run_kafka(ensure_topics(settings, echo=click.echo), settings)
    except TopicLayoutError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.option("--customers", default=200, show_default=True, type=click.IntRange(1), help="How many customers.")
@click.option("--rate", default=200.0, show_default=True, type=click.FloatRange(min=0.1), help="Events per second.")
@click.option("--duration", default=30.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds to run.")
@click.option(
    "--history-days",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Days of simulated history compressed into the run (event time ends at now); 0 for live events.",
)
@click.option("--seed", default=7, show_default=True, help="Random seed: the same seed gives the same customers and events.")
@click.option("--output", "output_path", default=None, type=click.Path(dir_okay=False, path_type=Path), help="Write the history to this JSON Lines file instead of Kafka (rate × duration events, or --events).")
@click.option("--events", "event_count", default=None, type=click.IntRange(1), help="With --output: how many events.")
@click.option("--labels", "labels_path", default=None, type=click.Path(dir_okay=False, path_type=Path), help="With --output: where to write the ground-truth churn labels (customer_id,churned_at); default FILE.labels.csv.")
@click.option("--end", "end_text", default=None, help="With --output: when the history ends (RFC 3339, YYYY-MM-DD or epoch ms; default now). With a fixed end, the same options write the same file.")
@click.option(
    "--with-csm", "csm", is_flag=True,
    help="Also the company's side: CSM touchpoints and pulses, CSAT surveys sent (answered less by customers in trouble), e-mails;"
    " their tone follows each customer's trouble. Off by default, so a seed gives the events it always gave.",
)
def generate(customers: int, rate: float, duration: float, history_days: float, seed: int, output_path: Path | None, event_count: int | None, labels_path: Path | None, end_text: str | None, csm: bool) -> None:
    """Produce realistic events to the four input topics: healthy customers,
    slowly disengaging ones, payment trouble and cancellations.

    With --output, write the same kind of history to a file instead, spanning
    --history-days of event time and ending now, with the churn labels beside it,
    so `healthscore replay` and `healthscore backtest` run out of the box."""
    if output_path is not None:
        from stream.commands.generate import write_history

        labels = labels_path or output_path.with_name(output_path.name + ".labels.csv")
        total = event_count or max(1, int(rate * duration))
        end_ms = _parse_time(end_text, "--end") if end_text else int(time.time() * 1000)
        start_ms = end_ms - int(max(history_days, 1.0) * 86_400_000)
        written, churned = write_history(str(output_path), str(labels), customers, total, start_ms, end_ms, seed, csm=csm)
        click.echo(f"Wrote {written} events for {customers} customers to {output_path}; {churned} churned customers in {labels}")
        return
    if end_text is not None:
        raise click.UsageError("--end goes with --output: events sent to Kafka end now")
    from stream.commands.generate import produce

    settings = _settings()
    topic_names = {kind: name for name, kind in settings.topics.inputs().items()}
    _run_kafka(produce(settings.kafka, topic_names, customers, rate, duration, history_days, seed, echo=click.echo, csm=csm), settings)


@main.command()
@click.option("--limit", type=click.IntRange(1), default=None, help="Stop after this many scores (default: run until Ctrl-C).")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest score on the topic instead of new ones only.")
@click.option("--idle-timeout", type=click.FloatRange(min=0.5), default=None, help="Stop when nothing arrives for this many seconds.")
def watch(limit: int | None, from_beginning: bool, idle_timeout: float | None) -> None:
    """Print health scores as they arrive on the customer-health topic."""
    from stream.commands.watch import watch as run_watch

    settings = _settings()
    try:
        _run_kafka(run_watch(settings.kafka, settings.topics.health, limit, from_beginning, idle_timeout, echo=click.echo), settings)
    except KeyboardInterrupt:
        pass


def _parse_time(text: str, option: str) -> int:
    from scoring.contract import Rejection, parse_timestamp_ms

    parsed = parse_timestamp_ms(int(text) if text.lstrip("-").isdigit() else text, option)
    if isinstance(parsed, Rejection):
        try:  # a plain date or a date-time without offset, read as UTC
            from stream.commands.transactions import parse_time_ms

            return parse_time_ms(text)
        except ValueError:
            raise click.BadParameter(parsed.detail, param_hint=option) from None
    return parsed


@main.command()
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="JSON Lines in the wire contract's shape, or a CSV with a header customer_id,occurred_at,amount (purchases).")
@click.option("--as-of", "as_of", default=None, help="Stop at this event time (RFC 3339, YYYY-MM-DD or epoch ms) and also write each customer's final score at it.")
@click.option("--output", "output_path", default="-", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True), help="Where to write the JSON Lines (default: standard output).")
@click.option("--sweep-every", type=click.FloatRange(min=0), default=None, help="Seconds of event time between inactivity sweeps (default: replay_sweep_interval_seconds from the config, one day; 0: no sweep).")
@click.option("--rejects", "rejects_path", default=None, type=click.Path(dir_okay=False, path_type=Path), help="Write the lines that did not validate here, with line number and reason.")
def replay(input_path: Path, as_of: str | None, output_path: Path, sweep_every: float | None, rejects_path: Path | None) -> None:
    """Replay history through the same state, scoring and alert code as the worker, in
    event-time order, with the inactivity sweep run in event time. No Kafka needed.

    Writes JSON Lines: {"kind": "score", ...} (the customer-health message),
    {"kind": "alert", ...} (the churn-alerts message) and, with --as-of,
    {"kind": "final", customer_id, score, band, churn_risk, ...} per customer.
    computed_at and raised_at are the event time, so the same input gives the same output.
    """
    from stream.commands.replay import run_replay

    settings = _settings()
    as_of_ms = _parse_time(as_of, "--as-of") if as_of else None
    echo = lambda text: click.echo(text, err=True)  # noqa: E731
    if str(output_path) == "-":
        summary = run_replay(settings, input_path, sys.stdout.buffer, as_of_ms, sweep_every, rejects_path, echo)
    else:
        with open(output_path, "wb") as output:
            summary = run_replay(settings, input_path, output, as_of_ms, sweep_every, rejects_path, echo)
    echo(json.dumps(summary))


@main.command()
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="History: JSON Lines (wire contract) or a purchase CSV customer_id,occurred_at,amount.")
@click.option("--labels", "labels_path", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="CSV customer_id,churned_at. Without it, churn means no purchase within the horizon.")
@click.option("--as-of", "as_of", required=True, help="Score every customer at this time from the history before it (RFC 3339, YYYY-MM-DD or epoch ms).")
@click.option("--horizon", "horizon_days", required=True, type=click.FloatRange(min=0, min_open=True), help="Days after --as-of in which a churn counts.")
@click.option("--top-k", type=click.IntRange(1), default=None, help="k for precision and lift at the top k (default: 10 %% of the customers).")
@click.option("--report", "report_path", default="backtest-report.html", show_default=True, type=click.Path(dir_okay=False, path_type=Path), help="Where to write the HTML report (ROC, calibration, score distributions, alert quality).")
@click.option("--alert-window", "alert_window_days", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Days before --as-of in which an alert makes a customer 'alerted' (for its churn rate, lift and share).")
@click.option("--alert-lookback", "alert_lookback_days", default=90.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Days before --as-of in which an alert counts for recall and lead time.")
@click.option("--recency-alert-days", default=14.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="The recency baseline as alerts: one when a customer has had no event for this many days.")
@click.option("--critical-share", default=0.05, show_default=True, type=click.FloatRange(0, 1), help="Print the score edge (at_risk_min) that flags this share of the customers as critical.")
@click.option("--flagged-share", default=0.25, show_default=True, type=click.FloatRange(0, 1), help="Print the score edge (healthy_min) that flags this share as at_risk or critical.")
def backtest(
    input_path: Path, labels_path: Path | None, as_of: str, horizon_days: float, top_k: int | None, report_path: Path,
    alert_window_days: float, alert_lookback_days: float, recency_alert_days: float, critical_share: float, flagged_share: float,
) -> None:
    """Check the model on history: score everyone at --as-of, compare with who churned
    within --horizon days, against simple baselines (recency only, RFM).

    Prints a JSON summary (ROC AUC, precision and recall of the at_risk + critical
    bands, precision and lift at the top k, median lead time from first alert to
    churn; alert quality overall, per rule and per severity, and for the recency
    baseline as alerts; each band's share and churn rate; the band edges that flag
    --critical-share and --flagged-share of the customers) and writes an HTML report.
    """
    from stream.commands.backtest import BacktestError, run_backtest

    settings = _settings()
    as_of_ms = _parse_time(as_of, "--as-of")
    try:
        summary = run_backtest(
            settings, input_path, labels_path, as_of_ms, horizon_days, top_k, report_path, lambda t: click.echo(t, err=True),
            alert_window_days, alert_lookback_days, recency_alert_days, (critical_share, flagged_share),
        )
    except BacktestError as error:
        raise click.ClickException(str(error)) from None
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="History: JSON Lines (wire contract) or a purchase CSV customer_id,occurred_at,amount, with the events after --as-of too (they say who churned when there is no --labels).")
@click.option("--labels", "labels_path", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="CSV customer_id,churned_at. Without it, churn means no purchase within the horizon.")
@click.option("--as-of", "as_of", required=True, help="Fit on every customer's state at this time (RFC 3339, YYYY-MM-DD or epoch ms).")
@click.option("--horizon", "horizon_days", required=True, type=click.FloatRange(min=1, max=3650), help="Days after --as-of: churn_risk becomes the probability of churning within them.")
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Where to write the config with the fitted model (must not exist): the current config file with [scoring.churn_risk] (and [scoring.bgnbd] when fitted) added or replaced; run with HEALTHSCORE_CONFIG=this file.")
def calibrate(input_path: Path, labels_path: Path | None, as_of: str, horizon_days: float, output_path: Path) -> None:
    """Fit the churn risk on your own history: replay it to --as-of through the worker's model,
    label who churned within --horizon days, fit a regularised logistic regression on the
    features the worker has when it scores (docs/model.md, "Calibrated churn risk"), and
    write a config that uses it. When at least 50 customers without a subscription bought
    (10 of them more than once), BG/NBD is fitted on their purchases first, as fit-bgnbd
    does, and written to [scoring.bgnbd] too. Prints the ROC AUC and Brier score before and after (out of
    sample, cross-validated), the coefficients, and suggested component weights (printed,
    never applied). Check it out of time with `healthscore backtest` at a later --as-of."""
    from stream.commands.backtest import BacktestError
    from stream.commands.calibrate import run_calibration

    if output_path.exists():
        raise click.BadParameter(f"{output_path} exists: choose another path (the active config is never overwritten)", param_hint="--output")
    settings = _settings()
    as_of_ms = _parse_time(as_of, "--as-of")
    try:
        summary, config_text = run_calibration(settings, input_path, labels_path, as_of_ms, horizon_days, lambda t: click.echo(t, err=True))
    except BacktestError as error:
        raise click.ClickException(str(error)) from None
    output_path.write_text(config_text)
    previous = os.environ.get("HEALTHSCORE_CONFIG")
    os.environ["HEALTHSCORE_CONFIG"] = str(output_path)
    try:
        load_settings()  # the file it wrote is one the worker accepts
    except SettingsError as error:
        raise click.ClickException(f"the config written to {output_path} does not load: {error}") from None
    finally:
        if previous is None:
            del os.environ["HEALTHSCORE_CONFIG"]
        else:
            os.environ["HEALTHSCORE_CONFIG"] = previous
    summary["config"] = str(output_path)
    click.echo(json.dumps(summary, indent=2))


@main.command()
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="History: JSON Lines (wire contract) or a purchase CSV customer_id,occurred_at,amount; include the period before --from (who was a customer at the start is read from it).")
@click.option("--from", "first", required=True, type=click.DateTime(formats=["%Y-%m-%d"]), help="First day of the period (YYYY-MM-DD, UTC).")
@click.option("--to", "last", required=True, type=click.DateTime(formats=["%Y-%m-%d"]), help="Last day of the period, included (YYYY-MM-DD, UTC).")
@click.option("--acquisition-spend", "spend", type=click.FloatRange(min=0, max=1e15), default=None, help="Acquisition spend over the period, for cac and ltv_to_cac (else the config's [[kpis.acquisition_spend]] entries within the period; else null).")
@click.option("--format", "output_format", type=click.Choice(["json", "table"]), default="json", show_default=True, help="One JSON object, or a table for people.")
def kpis(input_path: Path, first: datetime, last: datetime, spend: float | None, output_format: str) -> None:
    """The fleet's KPIs over one period of a history, by the source articles' definitions
    (docs/model.md, "KPIs of a period"): customers at start and end, new, lost, retention
    and churn, lifetime, repurchase, loyal customers, basket, upsell, abandonment, LTV, CAC,
    MRR and its growth (existing customers only, with new, expansion, contraction and
    churned MRR), NPS, CSAT, CES, Loyalty and Secure indexes, participation, time to
    resolution, DAU/WAU/MAU. A figure the data does not allow is null."""
    from stream.commands.kpis import as_json, as_table, period_kpis

    if last < first:
        raise click.BadParameter(f"{last:%Y-%m-%d} is before --from {first:%Y-%m-%d}", param_hint="--to")
    for option, day in (("--from", first), ("--to", last)):
        if not 2000 <= day.year < 2100:  # the contract's event times: a year outside is a typo
            raise click.BadParameter(f"{day:%Y-%m-%d} is outside 2000-2099, the years events can have", param_hint=option)
    if spend is not None and not math.isfinite(spend):
        raise click.BadParameter("must be a finite amount", param_hint="--acquisition-spend")
    result = period_kpis(_settings(), input_path, first.date(), last.date(), spend, lambda t: click.echo(t, err=True))
    click.echo(as_table(result) if output_format == "table" else as_json(result))


@main.command()
@click.argument("customer_ids", nargs=-1)
@click.option("--file", "id_file", type=click.File("r"), help="Also erase the customer ids in this file, one per line ('-': standard input).")
@click.option("--reason", default="", help="Why, kept in the audit record (a ticket number, 'GDPR art. 17 request'); no personal data.")
@click.option("--status", "status_of", metavar="CUSTOMER_ID", help="Instead: say whether this customer's erasure is done and what it deleted.")
@click.option("--allow-return", "allow_return", is_flag=True,
              help="Instead: let these erased customers come back; their events from now on are applied again (earlier ones stay refused).")
def erase(customer_ids: tuple[str, ...], id_file, reason: str, status_of: str | None, allow_return: bool) -> None:
    """Erase customers everywhere the project keeps them: their state (and its changelog),
    Redis, and their latest score on the customer-health topic (a tombstone).

    The worker that owns each customer applies the request in order with its events, and
    records it on the audit topic under the customer's keyed hash (privacy.hash_key), never
    the id. The customer stays erased: its events are refused (outcome "erased"), also when
    an input topic is read again, and its waiting or parked alerts are not delivered, until
    `erase --allow-return ID` (or privacy.erasure_quarantine_days after the erasure).
    Copies that go by retention, with their dates: `erase --status ID` (docs/privacy.md)."""
    from scoring.privacy import subject_hash
    from stream.commands.erase import audit_records, new_request, send_requests

    settings = _settings()
    if settings.privacy.hash_key is None:
        raise click.ClickException(
            "privacy.hash_key is not set: erasures are audited under a keyed hash of the customer id; set "
            "HEALTHSCORE_PRIVACY__HASH_KEY to a random secret (e.g. `openssl rand -hex 32`), the same for every worker"
        )
    key = settings.privacy.hash_key.get_secret_value().encode()
    if status_of is not None:
        records = _run_kafka(audit_records(settings.kafka, settings.topics.erasures, subject_hash(key, status_of)), settings)
        if not records:
            raise click.ClickException("no erasure recorded for this customer (not requested, or not applied yet: is a worker running?)")
        for record in records:
            click.echo(f"erased at {record.erased_at} (requested {record.requested_at}, request {record.request_id}): {', '.join(record.deleted)}")
            for copy, when in record.expires.items():
                click.echo(f"  {copy}: {when}")
            click.echo(f"  may return: from {record.returns_from}" if record.returns_from else "  may return: no (`erase --allow-return ID`)")
        return
    ids = [*customer_ids, *([line.strip() for line in id_file if line.strip()] if id_file else [])]
    if not ids:
        raise click.UsageError("give customer ids, or --file, or --status ID")
    from scoring.contract import MAX_TEXT

    too_long = sum(1 for customer_id in ids if len(customer_id) > MAX_TEXT)
    if too_long:
        raise click.BadParameter(f"{too_long} id(s) longer than {MAX_TEXT} characters: no such customer can exist", param_hint="CUSTOMER_IDS")
    if len(reason) > MAX_TEXT:
        raise click.BadParameter(f"at most {MAX_TEXT} characters (a ticket number, a legal basis)", param_hint="--reason")
    now = time.time()
    requests = [new_request(key, customer_id, reason, now, allow_return) for customer_id in dict.fromkeys(ids)]
    _run_kafka(send_requests(settings.kafka, settings.topics.sweep, requests), settings)
    if allow_return:
        click.echo(f"Return allowed for {len(requests)} customer(s); their events from now on are applied again")
    else:
        click.echo(f"Erasure requested for {len(requests)} customer(s); `healthscore erase --status ID` says when each is done")


@main.command()
@click.option("--test", "test_endpoint", metavar="ENDPOINT", help="Send a sample alert to this endpoint (checks its URL and secret), then exit.")
@click.option("--redrive", "redrive_endpoint", metavar="ENDPOINT", help="Send this endpoint's parked alerts again (from the delivery_failed topic), then exit.")
def deliver(test_endpoint: str | None, redrive_endpoint: str | None) -> None:
    """Deliver alerts from churn-alerts to the webhooks and Slack channels of
    [[delivery.endpoints]]: Standard Webhooks signatures, retries with backoff, at least once
    per endpoint; what cannot be delivered is parked on churn-alerts.delivery-failed. Runs
    apart from the workers (its own consumer group), so a slow endpoint never slows
    scoring; /metrics on delivery.metrics_port (6067)."""
    import signal

    from prometheus_client import start_http_server

    from stream import metrics
    from stream.delivery.service import redrive, run_delivery, send_test

    settings = _settings()
    try:
        if test_endpoint is not None:
            outcome = asyncio.run(send_test(settings, settings.delivery.endpoint(test_endpoint)))
            if not outcome.delivered:
                raise click.ClickException(f"{test_endpoint}: not delivered after {outcome.attempts} attempt(s): {outcome.error}")
            click.echo(f"{test_endpoint}: delivered (attempt {outcome.attempts})")
            return
        if redrive_endpoint is not None:
            _check_erasures_readable(settings)
            done, left = _run_kafka(redrive(settings, settings.delivery.endpoint(redrive_endpoint), echo=click.echo), settings)
            click.echo(f"{redrive_endpoint}: {done} parked alert(s) delivered, {left} left parked")
            if left:
                raise click.exceptions.Exit(1)
            return
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    if not settings.delivery.endpoints:
        # Consuming with nowhere to deliver would commit the alerts past: refuse instead.
        raise click.ClickException("no [[delivery.endpoints]] configured: add one (docs/delivery.md) before starting deliver")
    _check_kafka(settings)
    _require_topic(settings, settings.topics.delivery_failed)
    _check_erasures_readable(settings)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(name)s: %(message)s")
    start_http_server(settings.delivery.metrics_port, addr=settings.delivery.metrics_host, registry=metrics.REGISTRY)

    async def main_loop() -> None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await run_delivery(settings, echo=click.echo, stop=stop)

    asyncio.run(main_loop())


@main.command()
def ingest() -> None:
    """Receive events over HTTP and produce them into the four input topics: our own contract
    (POST /v1/events, bearer tokens), Stripe webhooks (POST /stripe), Zendesk webhooks (POST
    /zendesk) and Segment's tracking API (POST /v1/batch, /v1/track, /v1/group, ...: point an
    SDK's host here). Signatures and tokens from [ingest] (docs/ingest.md). Answers 2xx only
    once Kafka acknowledged, so the sender retries otherwise; keeps no state. /metrics and
    /healthz on the same port (ingest.port, 6068)."""
    import signal

    from aiokafka import AIOKafkaProducer

    from stream.ingest.server import serve
    from stream.kafka.clients import connection_options

    settings = _settings()
    _check_kafka(settings)
    topics = settings.topics
    for topic in (topics.purchases, topics.usage, topics.tickets, topics.payments, topics.ingest_rejected):
        _require_topic(settings, topic)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(name)s: %(message)s")

    async def main_loop() -> None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        producer = AIOKafkaProducer(**connection_options(settings.kafka), acks="all", enable_idempotence=True, linger_ms=2)
        await producer.start()
        try:
            await serve(settings, producer, stop, echo=click.echo)
        finally:
            await producer.stop()

    asyncio.run(main_loop())


@main.command("sweep")
@click.option(
    "--at",
    "at_text",
    default=None,
    help="Event time to rescore at: RFC 3339 (2026-11-22T10:00:00Z) or epoch milliseconds. Default: now. "
    "At most max_future_skew_seconds ahead of now (a sweep in the future would evict customers).",
)
def sweep_command(at_text: str | None) -> None:
    """Ask the running workers to rescore their silent customers now (or at --at), without
    waiting for the periodic sweep: customers without an event for at least
    sweep_interval_seconds get inactivity decay and silence alerts, and changed scores
    are published."""
    from scoring.contract import Rejection, parse_timestamp_ms
    from stream.processing.sweep import request_sweep

    settings = _settings()
    now = time.time()
    at_ms = int(now * 1000)
    if at_text is not None:
        parsed = parse_timestamp_ms(int(at_text) if at_text.lstrip("-").isdigit() else at_text, "--at")
        if isinstance(parsed, Rejection):
            raise click.BadParameter(parsed.detail, param_hint="--at")
        at_ms = parsed
    ahead_s = (at_ms - int(now * 1000)) / 1000
    if ahead_s > settings.max_future_skew_seconds:
        raise click.BadParameter(
            f"{ahead_s:.0f} s in the future: a sweep may run at most max_future_skew_seconds "
            f"({settings.max_future_skew_seconds} s) ahead of now, since customers silent for state_ttl_days "
            "at that time would be evicted (the workers refuse such a tick too)",
            param_hint="--at",
        )
    count = _run_kafka(request_sweep(settings, at_ms, now), settings)
    click.echo(f"Sweep requested on {count} partition(s) at {datetime.fromtimestamp(at_ms / 1000, timezone.utc).isoformat()}")


@main.command()
def version() -> None:
    """Print the version, whether the model runs compiled (mypyc) or as pure Python, and
    whether the Rust kernel is built (the worker uses it unless native_kernel = false)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    import scoring.compiled
    from scoring import kernel
    from scoring.health import MODEL_REVISION

    try:
        installed = package_version("healthscore")
    except PackageNotFoundError:
        installed = "not installed"
    built = "built" if kernel.available() else "not built"
    click.echo(f"healthscore {installed}, model revision {MODEL_REVISION}, {scoring.compiled.status}, Rust kernel {built}")


@main.command("fit-bgnbd")
@click.option("--transactions", "transactions_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="CSV with a header and columns customer_id,occurred_at,amount.")
@click.option("--calibration-end", required=True, type=click.DateTime(formats=["%Y-%m-%d"]), help="YYYY-MM-DD (UTC): purchases dated on or before it are used; customer ages (T) are measured from the first purchase day to it.")
@click.option("--time-unit", type=click.Choice(["day", "week"]), default="week", show_default=True, help="Unit of t_x, T and alpha.")
def fit_bgnbd(transactions_file: Path, calibration_end: datetime, time_unit: str) -> None:
    """Fit the BG/NBD purchase model by maximum likelihood and print its parameters as JSON.

    Copy r, alpha, a, b and time_unit into [scoring.bgnbd] of config/healthscore.toml
    so the worker scores expected purchases for customers without a contract.
    """
    from scoring.bgnbd import fit, summarize
    from stream.commands.transactions import ReadReport, TransactionsError, read_purchases

    report = ReadReport()
    end_ms = int(calibration_end.replace(tzinfo=timezone.utc).timestamp() * 1000)
    try:
        purchases = [(customer, at_ms) for customer, at_ms, _ in read_purchases(transactions_file, report)]
    except TransactionsError as error:
        raise click.ClickException(str(error)) from None
    if report.skipped:
        click.echo(f"Skipped {report.skipped} of {report.rows} rows: " + "; ".join(report.examples), err=True)
    histories = list(summarize(purchases, end_ms, 7.0 if time_unit == "week" else 1.0).values())
    if not histories:
        raise click.ClickException(f"no purchases before {calibration_end:%Y-%m-%d} in {transactions_file}")
    result = fit(histories)
    parameters = result.parameters
    click.echo(
        json.dumps(
            {
                "r": parameters.r,
                "alpha": parameters.alpha,
                "a": parameters.a,
                "b": parameters.b,
                "log_likelihood": result.log_likelihood,
                "customers": result.customers,
                "time_unit": time_unit,
            }
        )
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
