"""Method registry: `create_method(name, cfg, ...)`, `list_methods()`."""

from __future__ import annotations

from asymco.methods.act import ACT
from asymco.methods.base import Method
from asymco.methods.coteaching import CoTeaching
from asymco.methods.coteaching_plus import CoTeachingPlus
from asymco.methods.jocor import JoCoR
from asymco.methods.standard import Standard
from asymco.registry import Registry

METHODS = Registry("method")
METHODS.register("act")(ACT)
METHODS.register("standard")(Standard)
METHODS.register("coteaching")(CoTeaching)
METHODS.register("coteaching_plus")(CoTeachingPlus)
METHODS.register("jocor")(JoCoR)


def create_method(name: str, *args, **kwargs) -> Method:
    return METHODS.create(name, *args, **kwargs)


def list_methods() -> list[str]:
    return METHODS.names()


__all__ = [
    "ACT",
    "METHODS",
    "CoTeaching",
    "CoTeachingPlus",
    "JoCoR",
    "Method",
    "Standard",
    "create_method",
    "list_methods",
]
