"""The work behind the ``healthscore`` subcommands other than the worker: replay and
backtest of history (``replay.py``, ``backtest.py``, reading files with ``history.py`` and
``transactions.py``), the event generator (``generate.py``) and ``watch`` (``watch.py``).

May import: ``scoring``, ``stream.settings``, ``stream.memory``, ``stream.kafka`` (its client
connection), aiokafka. Not the worker:
a replay runs the model in ``scoring`` directly, without Kafka.
"""
