"""Method registry: `create_method(name, cfg, ...)`, `list_methods()`."""

from __future__ import annotations

from asymco.methods.act import ACT
from asymco.methods.base import Method
from asymco.methods.standard import Standard
from asymco.registry import Registry

METHODS = Registry("method")
METHODS.register("act")(ACT)
METHODS.register("standard")(Standard)


def create_method(name: str, *args, **kwargs) -> Method:
    return METHODS.create(name, *args, **kwargs)


def list_methods() -> list[str]:
    return METHODS.names()


__all__ = ["ACT", "METHODS", "Method", "Standard", "create_method", "list_methods"]
