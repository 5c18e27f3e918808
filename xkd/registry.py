"""One small typed registry (name -> factory), used by datasets, models, methods, explainers, metrics.

Modelled on timm's registry: ``@REG.register("name")`` on a factory, ``REG.build(name, **kw)``,
``REG.names()`` for discovery. A factory may carry a pydantic ``params`` model so that the
experiment file validates its parameters with field paths.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel

from xkd.errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered factory with its metadata."""

    name: str
    factory: Callable[..., T]
    params: type[BaseModel] | None = None
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Maps names to typed factories for one family (``kind``: 'dataset', 'model', 'method', ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._prefixes: dict[str, Entry[T]] = {}

    def register(
        self,
        name: str,
        *,
        params: type[BaseModel] | None = None,
        description: str = "",
        prefix: bool = False,
        **meta: Any,
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory`` under ``name``.

        ``prefix=True`` registers a family such as ``tv:`` whose factory receives the full name.
        """

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            table = self._prefixes if prefix else self._entries
            if name in table:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            doc = description or (factory.__doc__ or "").strip().split("\n")[0]
            table[name] = Entry(name, factory, params, doc, dict(meta))
            return factory

        return deco

    def entry(self, name: str, path: str = "") -> Entry[T]:
        """The entry for ``name``; raises :class:`UnknownNameError` listing the allowed names."""
        if name in self._entries:
            return self._entries[name]
        for pre, e in self._prefixes.items():
            if name.startswith(pre) and len(name) > len(pre):
                return e
        raise UnknownNameError(self.kind, name, self.names(), path)

    def build(self, name: str, **kwargs: Any) -> T:
        """Call the factory registered for ``name``."""
        e = self.entry(name)
        if name not in self._entries:
            return e.factory(name, **kwargs)
        return e.factory(**kwargs)

    def names(self) -> list[str]:
        """Sorted registered names (prefix families shown as ``prefix*NAME``)."""
        return sorted(self._entries) + [f"{p}NAME" for p in sorted(self._prefixes)]

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in sorted(self._entries)] + list(self._prefixes.values())

    def __contains__(self, name: str) -> bool:
        try:
            self.entry(name)
            return True
        except UnknownNameError:
            return False


def import_members(package: str) -> None:
    """Import every public module and subpackage of ``package`` (the family's ``__init__`` calls it
    last), so that each member registers itself and adding one is one new file."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
