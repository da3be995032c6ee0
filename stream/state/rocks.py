"""rocksdict, loaded on first use: a worker on the in-memory store never touches RocksDB, and
loading its library costs about 7 MB of resident memory (an idle worker: 92 MB with it, 2026-12-08).

Modules that use RocksDB write ``from stream.state.rocks import rocksdict``; their annotations
name it as a string (``from __future__ import annotations``). Not the standard library's
``importlib.util.LazyLoader``: its module sits in ``sys.modules``, and Faust's agent decorator
(venusian, through ``inspect.getmodule``) reads ``__file__`` of every module there, which
loads it at the worker's start (tried). Imports: the standard library only.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for a module until an attribute is read, then loads it (once)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attribute)


rocksdict: Any = LazyModule("rocksdict")
