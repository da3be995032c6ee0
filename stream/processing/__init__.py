"""The agent's work on each batch: the topics it reads and writes (``topics.py``), the batch
loop (``batches.py``), one event's path through the Python model or the Rust kernel
(``events.py``), a raw record's event time for the merge of the inputs (``event_time.py``),
what a batch publishes (``publishing.py``) and the inactivity sweep
(``sweep.py``). It decodes, validates, calls ``scoring``, publishes and counts; it decides
nothing about the model.

May import: ``scoring``, ``stream.kafka``, ``stream.state``, ``stream.sinks``,
``stream.settings``, ``stream.metrics``, ``stream.memory``.
"""
