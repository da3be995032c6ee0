"""Logs for machines: one JSON object per line (``log_format = "json"``), for log pipelines
that parse rather than read. Plain text stays the default, for people at a terminal."""

from __future__ import annotations

import logging


def json_logging_config(level: str | int) -> dict:
    """A ``logging.config.dictConfig`` for Faust's worker: every record as one JSON object on
    standard output, with ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` and the
    fields a call adds (``extra``), by python-json-logger."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
                "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
                "datefmt": "%Y-%m-%dT%H:%M:%S%z",
            }
        },
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
        "root": {"level": logging.getLevelName(level.upper()) if isinstance(level, str) else level, "handlers": ["default"]},
    }
