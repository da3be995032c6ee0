"""The running worker assembled: ``build_app`` (``app.py``) creates the Faust app and hands
each part what it needs; the rebalance hooks (``rebalance.py``), the periodic jobs
(``timers.py``), the fleet gauges (``fleet.py``), Redis refills (``cache_refill.py``), the
quieting of Kafka client errors during an outage (``quiet_outages.py``) and the HTTP pages
(``web.py``) live here.

May import every package of ``stream`` but ``commands``, ``services`` and ``cli``.
"""
