"""`healthscore ingest`: events from the tools companies already use, over HTTP into the four
input topics. One module per source (``stripe``, ``zendesk``, ``segment``, ``contract``), each
a pure mapping from the source's payload to contract events, a rejection or an ignored type
(``mapped.Mapped``); ``server`` verifies signatures and tokens, maps, checks the contract's
bounds and produces, answering 2xx only once Kafka acknowledged. May import ``scoring``,
``stream.kafka`` and the shared modules (settings, metrics)."""
