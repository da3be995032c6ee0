"""``healthscore deliver``: alerts from ``churn-alerts`` to webhooks and Slack, in a process of
its own so a slow or failing endpoint never slows scoring.

``payloads.py`` holds what is sent (Standard Webhooks bodies and signatures, Slack Block
Kit messages, the endpoint filters), ``endpoints.py`` how one alert reaches one endpoint
(retries with backoff and jitter, Retry-After, 410, the pause of an endpoint that keeps
failing, the rate limit), ``service.py`` the consumer loop, the parking topic and redrive.

May import: ``stream.settings``, ``stream.metrics``, ``stream.kafka`` (client connection),
``stream.state`` (the deny-list of erased customers), aiokafka, aiohttp, standardwebhooks,
slack_sdk. Not the worker.
"""
