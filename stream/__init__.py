"""Wiring around the pure model in ``scoring/``: the streaming worker, its sinks, the commands
people run and the local services. Nothing here computes a KPI or a score.

One folder per concern (docs/architecture.md); the shared modules at this level are the
settings (``settings.py``, loaded once), every Prometheus metric (``metrics.py``), memory
tuning (``memory.py``) and the ``healthscore`` command (``cli.py``). A package imports only
``scoring``, these shared modules and the packages its docstring names; nothing imports
``cli``.
"""
