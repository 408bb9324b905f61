"""Explicit registries: one namespace per kind of component (dataset, balancer, fusion, encoder, recipe)."""
from __future__ import annotations

from typing import Any, Callable

KINDS = ("datasets", "balancers", "fusions", "encoders", "audio_recipes")
_REGISTRY: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}


def _table(kind: str) -> dict[str, Any]:
    if kind not in _REGISTRY:
        raise KeyError(f"unknown registry kind {kind!r}; kinds are {', '.join(KINDS)}")
    return _REGISTRY[kind]


def register(kind: str, name: str) -> Callable[[Any], Any]:
    """Decorator: ``@register("balancers", "ogm_ge")``. A second registration of a name raises."""
    table = _table(kind)

    def decorate(obj: Any) -> Any:
        if name in table:
            raise ValueError(f"{kind} {name!r} is registered twice ({table[name]!r} and {obj!r})")
        table[name] = obj
        return obj

    return decorate


def get(kind: str, name: str) -> Any:
    table = _table(kind)
    if name not in table:
        raise KeyError(f"unknown {kind[:-1]} {name!r}; registered: {', '.join(sorted(table))}")
    return table[name]


def names(kind: str) -> list[str]:
    return sorted(_table(kind))
