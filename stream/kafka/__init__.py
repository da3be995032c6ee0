"""Kafka plumbing, without the model: the batching source and the consumer that feeds it
whole fetches (``batching.py``), merged by event time across the co-partitioned topics
(``event_time.py``), the producer that sends a batch's messages as producer
batches (``producer.py``), topic administration (``topics.py``), reading a topic to its end (``reading.py``), and how every client
connects and authenticates, from the ``[kafka]`` settings (``clients.py``).

May import: ``stream.settings``, ``stream.metrics``, Faust and aiokafka. Not the model.
"""
