"""The local Kafka broker (KRaft) and Redis that ``healthscore services``, the demo and the
integration tests start, without Docker (``local.py``).

May import: ``stream.settings``, aiokafka.
"""
