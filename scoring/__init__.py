"""Pure domain code: the wire contract, per-customer state, and the health score.

Nothing here imports a transport, a store, a metrics library or a clock:
every function receives the time it evaluates at.
"""

from scoring.compiled import guard as _guard

_guard()
