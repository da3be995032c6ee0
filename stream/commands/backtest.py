"""``healthscore backtest``: does a low score come before churn, and how early?

Replays history up to ``as_of`` through the worker's own pipeline, scores every
customer at ``as_of``, and compares with who churned within the horizon: from a
labels file (customer_id, churned_at), or, without one, "no purchase within the
horizon" among customers who had bought before. Baselines (recency only, RFM)
run on the same customers, so a user sees what the model adds.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

from scoring import backtest as metrics
from scoring import kernel
from scoring.contract import CsmTouchpoint, PurchaseCompleted
from scoring.output import rfc3339
from scoring.replay import AlertRaised, Replayer, ScoreChanged
from scoring.state import DAY_MS, day_total
from stream.commands.history import budgeted, read_history
from stream.settings import Settings
from stream.commands.transactions import parse_time_ms


class BacktestError(ValueError):
    pass


def read_labels(path: Path) -> dict[str, int]:
    import csv

    labels: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not {"customer_id", "churned_at"} <= set(reader.fieldnames or []):
            raise BacktestError(f"{path}: the header must name customer_id,churned_at")
        for row in reader:
            try:
                labels[row["customer_id"].strip()] = parse_time_ms(row["churned_at"])
            except (ValueError, AttributeError):
                raise BacktestError(f"{path} line {reader.line_num}: churned_at {row['churned_at']!r} is not a date") from None
    return labels


def run_backtest(
    settings: Settings,
    input_path: Path,
    labels_path: Path | None,
    as_of_ms: int,
    horizon_days: float,
    top_k: int | None,
    report_path: Path | None,
    echo,
    alert_window_days: float = 30.0,
    alert_lookback_days: float = 90.0,
    recency_alert_days: float = 14.0,
    band_shares: tuple[float, float] = (0.05, 0.25),
) -> dict:
    history = read_history(input_path)
    if history.rejected:
        echo(f"{len(history.rejected)} of {history.read} lines rejected and left out (run `healthscore replay --rejects FILE` to see them)")
    horizon_ms = int(horizon_days * DAY_MS)
    scores: dict[str, metrics.ScoreHistory] = {}
    replayer, alerts = _replay_until(settings, history.events, as_of_ms, scores)
    first_alert = _first_alerts(alerts, as_of_ms)
    population, churned_at, label_source = _churn_labels(replayer, history.events, labels_path, as_of_ms, horizon_ms)
    if not population:
        raise BacktestError(f"no customer has history before {rfc3339(as_of_ms)}")

    finals = {final.customer_id: final.health for final in replayer.final_scores(as_of_ms)}
    population = [c for c in population if c in finals]
    churned = [c in churned_at for c in population]
    k = top_k or max(1, round(0.1 * len(population)))
    rankings = _rankings(replayer, finals, population, as_of_ms)
    flagged = [finals[c].band in ("at_risk", "critical") for c in population]
    bands = metrics.precision_recall(flagged, churned)
    leads = [
        (churned_at[c] - first_alert[c].at_ms) / DAY_MS for c in population if c in churned_at and c in first_alert
    ]
    summary = {
        "as_of": rfc3339(as_of_ms),
        "horizon_days": horizon_days,
        "labels": label_source,
        "customers": len(population),
        "churned": sum(churned),
        "base_rate": round(sum(churned) / len(population), 4),
        "k": k,
        "model": {
            **{key: _round(value) for key, value in asdict(metrics.ranking_quality(rankings["model"], churned, k)).items()},
            "at_risk_or_critical": {"precision": _round(bands.precision), "recall": _round(bands.recall), "flagged": bands.flagged},
            # churn_risk read as a probability of churning within the horizon
            "brier": _round(metrics.brier_score(rankings["model"], churned)),
            "brier_base_rate": _round(metrics.brier_score([sum(churned) / len(churned)] * len(churned), churned)),
        },
        "reliability": [
            {"predicted": _round(predicted), "observed": _round(observed), "customers": count}
            for predicted, observed, count in metrics.reliability(rankings["model"], churned)
        ],
        "baselines": {
            name: {key: _round(value) for key, value in asdict(metrics.ranking_quality(risks, churned, k)).items()}
            for name, risks in rankings.items()
            if name != "model"
        },
        "lead_time_days": {
            "median": _round(metrics.median_or_none(leads)),
            "alerted_churners": len(leads),
            "churners": sum(churned),
        },
        "model_version": settings.model_parameters().model_version,
        "alert_quality": _alert_quality(
            history.events, alerts, population, churned_at, as_of_ms, (alert_window_days, alert_lookback_days), recency_alert_days
        ),
        "bands": [
            {"band": b.band, "customers": b.customers, "share": _round(b.share), "churn_rate": _round(b.churn_rate)}
            for b in metrics.band_shares([finals[c].band for c in population], churned, ("healthy", "at_risk", "critical"))
        ],
        "band_edges_for_shares": _band_edges([finals[c].score for c in population], band_shares),
        "csm_touchpoints": _touchpoint_effect(history.events, scores, as_of_ms),
    }
    if report_path is not None:
        write_report(report_path, summary, rankings, churned, [finals[c].score for c in population])
        summary["report"] = str(report_path)
    return summary


def _first_alerts(alerts: list, as_of_ms: int) -> dict:
    """Each customer's first alert in the 90 days before ``as_of_ms``."""
    first: dict[str, RaisedAlert] = {}
    for alert in alerts:
        if alert.at_ms >= as_of_ms - 90 * DAY_MS:
            first.setdefault(alert.customer_id, alert)
    return first


class RaisedAlert(NamedTuple):
    customer_id: str
    rule: str
    severity: str
    at_ms: int


def _replay_until(
    settings: Settings, events: list, as_of_ms: int, scores: dict[str, metrics.ScoreHistory] | None = None
) -> tuple[Replayer, list[RaisedAlert]]:
    """The worker's model run over the history before ``as_of_ms``, and every alert it raised
    (and every score it published, per customer, into ``scores`` when given)."""
    replayer = Replayer(
        settings.model_parameters(),
        settings.alerts.parameters(),
        settings.dedup_capacity,
        int(settings.replay_sweep_interval_seconds * 1000) or None,
        settings.sweep_min_score_change,
        settings.state_ttl_ms,
        settings.sweep_due_index,
        kernel.build_where_possible(settings.model_parameters(), settings.alerts.parameters(), settings.native_kernel),
    )
    alerts = []
    for item in budgeted(replayer.run(events, until_ms=as_of_ms), settings):
        if isinstance(item, AlertRaised):
            alerts.append(RaisedAlert(item.alert.customer_id, item.alert.rule, item.alert.severity, item.alert.occurred_at_ms))
        elif scores is not None and isinstance(item, ScoreChanged):
            scores.setdefault(item.customer_id, []).append((item.health.as_of_ms, item.health.score, item.health.band))
    return replayer, alerts


def _touchpoint_effect(events: list, scores: dict[str, metrics.ScoreHistory], as_of_ms: int, days: float = 30.0) -> dict:
    """Customers with a CSM touchpoint in the 30 days ending ``days`` before ``as_of_ms``: their
    score change over the ``days`` after it, against customers without one in the 90 days
    before ``as_of_ms`` who were in the same band that day (docs/model.md: not causal)."""
    start, end = as_of_ms - int((days + 30) * DAY_MS), as_of_ms - int(days * DAY_MS)
    touches: dict[str, int] = {}
    recently_touched = set()
    for event in events:
        if isinstance(event.data, CsmTouchpoint) and as_of_ms - 90 * DAY_MS <= event.occurred_at_ms <= as_of_ms:
            recently_touched.add(event.customer_id)
            if start <= event.occurred_at_ms < end:
                touches[event.customer_id] = min(touches.get(event.customer_id, event.occurred_at_ms), event.occurred_at_ms)
    untouched = [customer for customer in sorted(scores) if customer not in recently_touched]
    effect = metrics.touchpoint_effect(touches, {c: sorted(h) for c, h in scores.items()}, untouched, days)
    return {key: _round(value) if isinstance(value, float) else value for key, value in asdict(effect).items()}


def _alert_quality(
    events: list,
    alerts: list[RaisedAlert],
    population: list[str],
    churned_at: dict[str, int],
    as_of_ms: int,
    windows: tuple[float, float],
    recency_days: float,
) -> dict:
    """Alert quality overall, per rule and per severity, and for the recency baseline as alerts."""
    event_times: dict[str, list[int]] = {}
    for event in events:
        if event.occurred_at_ms <= as_of_ms:
            event_times.setdefault(event.customer_id, []).append(event.occurred_at_ms)
    for times in event_times.values():
        times.sort()
    customer_months = sum((as_of_ms - times[0]) / metrics.MONTH_MS for times in event_times.values())
    window_days, lookback_days = windows

    def quality(selected: list[tuple[str, int]]) -> dict:
        result = metrics.alert_quality(
            selected, customer_months, population, churned_at, as_of_ms, int(window_days * DAY_MS), int(lookback_days * DAY_MS)
        )
        return {key: value if isinstance(value, int) else _round(value) for key, value in asdict(result).items()}

    def grouped(key: str) -> dict:
        names = sorted({getattr(alert, key) for alert in alerts})
        return {name: quality([(a.customer_id, a.at_ms) for a in alerts if getattr(a, key) == name]) for name in names}

    baseline = metrics.recency_alerts(event_times, int(recency_days * DAY_MS), as_of_ms)
    return {
        "window_days": window_days,
        "lookback_days": lookback_days,
        "overall": quality([(a.customer_id, a.at_ms) for a in alerts]),
        "by_rule": grouped("rule"),
        "by_severity": grouped("severity"),
        "recency_baseline": {"silent_days": recency_days, **quality(baseline)},
    }


def _band_edges(scores: list[float], shares: tuple[float, float]) -> dict:
    """The score edges that would flag the given shares of these customers as critical, and as
    at_risk or critical: values for ``[scoring] at_risk_min`` and ``healthy_min``."""
    critical_share, flagged_share = shares
    return {
        "critical_share": critical_share,
        "at_risk_min": metrics.edge_for_share(scores, critical_share),
        "at_risk_or_critical_share": flagged_share,
        "healthy_min": metrics.edge_for_share(scores, flagged_share),
    }


def _churn_labels(
    replayer: Replayer, events: list, labels_path: Path | None, as_of_ms: int, horizon_ms: int
) -> tuple[list[str], dict[str, int], str]:
    """The customers alive at ``as_of_ms``, when those who churned within the horizon did,
    and where that came from (the labels file, or no purchase within the horizon)."""
    if labels_path is not None:
        labels = read_labels(labels_path)
        population = [c for c in sorted(replayer.states) if labels.get(c, as_of_ms + 1) > as_of_ms]
        churned_at = {c: labels[c] for c in population if c in labels and labels[c] <= as_of_ms + horizon_ms}
        return population, churned_at, "labels file"
    bought_after = {
        e.customer_id for e in events if isinstance(e.data, PurchaseCompleted) and as_of_ms < e.occurred_at_ms <= as_of_ms + horizon_ms
    }
    population = [c for c in sorted(replayer.states) if replayer.states[c].last_purchase_ms]
    churned_at = {c: as_of_ms + horizon_ms for c in population if c not in bought_after}
    return population, churned_at, "no purchase within the horizon"


def _rankings(replayer: Replayer, finals: dict, population: list[str], as_of_ms: int) -> dict[str, list[float]]:
    """Each ranking's churn risk per customer: the model's, recency only, and RFM."""
    states = [replayer.states[c] for c in population]
    recency_days = [(as_of_ms - s.last_event_ms) / DAY_MS for s in states]
    first_day = as_of_ms // DAY_MS - 89
    frequency = [sum(day_total(s.counts, name, first_day, as_of_ms // DAY_MS) for name in ("sessions", "feature_uses", "purchases")) for s in states]
    monetary = [day_total(s.counts, "revenue_cents", first_day, as_of_ms // DAY_MS) / 100 + 3 * s.mrr for s in states]
    return {
        "model": [finals[c].churn_risk for c in population],
        "recency": recency_days,
        "rfm": metrics.rfm_risk(recency_days, frequency, monetary),
    }


def _alert_quality_html(summary: dict) -> str:
    """The alert-quality tables of the report: per set of alerts, and per band."""
    quality = summary["alert_quality"]
    columns = ("alerts", "per_customer_month", "alerted_share", "alerted_churn_rate", "lift", "recall_in_window", "recall", "median_lead_days")

    def cell(value: object) -> str:
        return "" if value is None else (f"{value:,}" if isinstance(value, int) else f"{value:.3f}")

    def row(name: str, values: dict) -> str:
        return f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{cell(values.get(key))}</td>" for key in columns) + "</tr>"

    sets = [("all alerts", quality["overall"])]
    sets += [(f"rule {name}", values) for name, values in quality["by_rule"].items()]
    sets += [(f"severity {name}", values) for name, values in quality["by_severity"].items()]
    sets.append((f"recency baseline ({quality['recency_baseline']['silent_days']:g} days silent)", quality["recency_baseline"]))
    bands = "".join(
        f"<tr><th>{html.escape(b['band'])}</th><td>{b['customers']:,}</td><td>{cell(b['share'])}</td><td>{cell(b['churn_rate'])}</td></tr>"
        for b in summary["bands"]
    )
    return f"""<h2>Alert quality</h2>
<p>Alerted: an alert in the {quality['window_days']:g} days before as-of; recall: churners with an alert in the
{quality['window_days']:g} days (in window) or the {quality['lookback_days']:g} days (recall) before as-of; lead time from
that first alert to churn.</p>
<table><tr><th></th>{''.join(f'<th>{name.replace("_", " ")}</th>' for name in columns)}</tr>
{''.join(row(name, values) for name, values in sets)}</table>
<h2>Bands at as-of</h2>
<table><tr><th>band</th><th>customers</th><th>share</th><th>churn rate</th></tr>{bands}</table>"""


def _reliability_html(summary: dict) -> str:
    """The Brier score and the reliability table: churn_risk read as a probability."""
    model = summary["model"]
    rows = "".join(
        f"<tr><td>{index}</td><td>{row['predicted']:.3f}</td><td>{row['observed']:.3f}</td><td>{row['customers']}</td></tr>"
        for index, row in enumerate(summary["reliability"], 1)
    )
    brier = "n/a" if model["brier"] is None else f"{model['brier']:.4f}"
    return f"""<h2>churn_risk as a probability</h2>
<p>Brier score {brier} (predicting the base rate for everyone: {model['brier_base_rate']:.4f}; lower is better).
Each tenth of the customers by predicted risk, what was predicted and what happened within the horizon:</p>
<table><tr><th>tenth</th><th>mean predicted</th><th>observed churn rate</th><th>customers</th></tr>{rows}</table>"""


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _figure_png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _distribution_png(plt, scores: list[float], churned: list[bool]) -> str:
    figure, axis = plt.subplots(figsize=(6.5, 4))
    edges = list(range(0, 105, 5))
    axis.hist([s for s, c in zip(scores, churned) if not c], bins=edges, alpha=0.6, label="retained", density=True)
    axis.hist([s for s, c in zip(scores, churned) if c], bins=edges, alpha=0.6, label="churned", density=True)
    axis.set_xlabel("health score at as-of")
    axis.set_ylabel("share of customers")
    axis.set_title("Score distribution: churned vs retained")
    axis.legend()
    png = _figure_png(figure)
    plt.close(figure)
    return png


def _touchpoints_html(summary: dict) -> str:
    effect = summary["csm_touchpoints"]
    if not effect["touched"]:
        return "<h2>Did our actions help?</h2><p>No customer with a CSM touchpoint (csm.touchpoint) to compare in the window.</p>"
    return (
        f"<h2>Did our actions help?</h2><p>{effect['touched']} customers with a CSM touchpoint: score change over the "
        f"{effect['days']:g} days after it {effect['mean_change_touched']:+.2f} points, against {effect['mean_change_comparable']:+.2f} "
        f"for customers without one who were in the same band that day (difference {effect['difference']:+.2f}). "
        "An association, not a causal estimate: CSMs choose whom they call.</p>"
    )


def write_report(path: Path, summary: dict, rankings: dict[str, list[float]], churned: list[bool], scores: list[float]) -> None:
    """A self-contained HTML page: metrics table, ROC curves, calibration, score distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = {}
    figure, axis = plt.subplots(figsize=(5.5, 5))
    for name, risks in rankings.items():
        points = metrics.roc_curve(risks, churned)
        auc = metrics.roc_auc(risks, churned)
        axis.plot([p[0] for p in points], [p[1] for p in points], label=f"{name} (AUC {auc:.3f})" if auc is not None else name)
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey", label="random")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title("ROC: who churned within the horizon")
    axis.legend(loc="lower right")
    images["roc"] = _figure_png(figure)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(5.5, 5))
    bins = metrics.calibration(rankings["model"], churned)
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    axis.plot([b[0] for b in bins], [b[1] for b in bins], marker="o", label="model churn_risk")
    for predicted, observed, count in bins:
        axis.annotate(str(count), (predicted, observed), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axis.set_xlabel("predicted churn risk (mean of bin)")
    axis.set_ylabel("observed churn rate")
    axis.set_title("Calibration (labels: customers per bin)")
    axis.legend(loc="upper left")
    images["calibration"] = _figure_png(figure)
    plt.close(figure)

    images["distribution"] = _distribution_png(plt, scores, churned)

    def row(name: str, values: dict) -> str:
        cells = "".join(f"<td>{'' if values.get(key) is None else f'{values[key]:.3f}'}</td>" for key in ("roc_auc", "precision_at_k", "lift_at_k"))
        return f"<tr><th>{html.escape(name)}</th>{cells}</tr>"

    model = summary["model"]
    bands = model["at_risk_or_critical"]
    lead = summary["lead_time_days"]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Health score backtest, as of {html.escape(summary['as_of'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
th{{text-align:left}}img{{max-width:100%}}.figures{{display:flex;flex-wrap:wrap;gap:1em}}</style></head>
<body>
<h1>Health score backtest</h1>
<p>Scored {summary['customers']} customers at <b>{html.escape(summary['as_of'])}</b> from their history before it;
{summary['churned']} churned within {summary['horizon_days']:g} days (base rate {summary['base_rate']:.1%}; labels: {html.escape(summary['labels'])}).
Model version <code>{html.escape(summary['model_version'])}</code>.</p>
<h2>Ranking quality</h2>
<table><tr><th></th><th>ROC AUC</th><th>precision at top {summary['k']}</th><th>lift at top {summary['k']}</th></tr>
{row('health model (churn_risk)', model)}
{''.join(row(name + ' baseline', values) for name, values in summary['baselines'].items())}
</table>
<p>Customers in the at_risk or critical band: {bands['flagged']} flagged, precision
{'' if bands['precision'] is None else f"{bands['precision']:.3f}"}, recall {'' if bands['recall'] is None else f"{bands['recall']:.3f}"}.</p>
<p>Alerted churners: {lead['alerted_churners']} of {lead['churners']}; median lead time from the first alert (in the 90 days before as-of) to churn:
{'n/a' if lead['median'] is None else f"{lead['median']:.1f} days"}.</p>
{_alert_quality_html(summary)}
{_reliability_html(summary)}
{_touchpoints_html(summary)}
<div class="figures">
<img alt="ROC curves of the model and the baselines" src="data:image/png;base64,{images['roc']}">
<img alt="Calibration of churn_risk" src="data:image/png;base64,{images['calibration']}">
<img alt="Score distribution of churned and retained customers" src="data:image/png;base64,{images['distribution']}">
</div>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
