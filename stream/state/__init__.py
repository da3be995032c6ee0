"""Per-customer state: the customer-state table and its key index (``table.py``), the records
one batch touches (``working_set.py``), the changelog written once per offset commit
(``changelog.py``), the table's recovery from the changelog in groups (``recovery.py``) and
the deny-list of erased customers, followed from the audit topic (``erased.py``); the RocksDB
store (``store.py``, its on-disk indexes in ``disk_index.py``, rocksdict loaded on first use
by ``rocks.py``).

May import: ``scoring``, ``stream.kafka``, ``stream.settings``, ``stream.metrics``.
"""
