"""A name -> factory registry, so YAML configs and the CLI can name any part.

Modules register their own parts with ``@register(kind, name)``; the core
never imports a domain module. Installed packages that declare an entry point
in the ``memkit.plugins`` group (memkit's own buffers, agents and data do) are
imported the first time the registry is read, so third-party stores and
learners appear beside the built-in ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

KINDS = ("store", "learner", "model", "stream")
_factories: dict[str, dict[str, Callable]] = {kind: {} for kind in KINDS}
_plugins_loaded = False


def register(kind: str, name: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``factory`` (a class or function) as ``kind`` ``name``."""
    _check_kind(kind)

    def decorate(factory: Callable) -> Callable:
        existing = _factories[kind].get(name)
        if existing is not None and existing is not factory:
            raise ValueError(f"register: {kind} {name!r} is already registered "
                             f"by {existing.__module__}.{existing.__qualname__}")
        _factories[kind][name] = factory
        return factory

    return decorate


def get(kind: str, name: str) -> Callable:
    """The factory registered as ``kind`` ``name``; the error lists what is available."""
    _check_kind(kind)
    _load_plugins()
    try:
        return _factories[kind][name]
    except KeyError:
        known = ", ".join(sorted(_factories[kind])) or "none"
        raise KeyError(f"no {kind} named {name!r}; available: {known}") from None


def create(kind: str, name: str, /, **kwargs):
    return get(kind, name)(**kwargs)


def available(kind: str | None = None) -> dict[str, list[str]]:
    """Registered names by kind (or for one kind)."""
    _load_plugins()
    kinds = KINDS if kind is None else (_check_kind(kind) or (kind,))
    return {k: sorted(_factories[k]) for k in kinds}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"registry: unknown kind {kind!r}; expected one of {KINDS}")


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in entry_points(group="memkit.plugins"):
        importlib.import_module(entry.value)
