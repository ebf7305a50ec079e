"""Method registry: `create_method(name, settings, ...)`, `list_methods()`.

Each method is registered once, under one name, together with its settings class, so that
`method.name=<name>` and `--set method.<key>=...` reach it.
"""

from __future__ import annotations

from typing import Any

from asymco.config import METHOD_SETTINGS
from asymco.methods.act import ACT
from asymco.methods.agce import AGCE
from asymco.methods.anl import ANL
from asymco.methods.base import Method
from asymco.methods.coteaching import CoTeaching
from asymco.methods.coteaching_plus import CoTeachingPlus
from asymco.methods.decoupling import Decoupling
from asymco.methods.dividemix import DivideMix
from asymco.methods.jocor import JoCoR
from asymco.methods.josrc import JoSRC
from asymco.methods.sop import SOP
from asymco.methods.standard import Standard
from asymco.registry import Registry

METHODS = Registry("method")


def register_method(name: str, method: type[Method]) -> None:
    """Register `method` and its `Settings` under `name` (the settings' default name)."""
    if method.Settings().name != name:
        raise ValueError(f"{method.__name__}.Settings names itself {method.Settings().name!r}")
    METHODS.register(name)(method)
    METHOD_SETTINGS.register(name)(method.Settings)


register_method("act", ACT)
register_method("standard", Standard)
register_method("coteaching", CoTeaching)
register_method("coteaching_plus", CoTeachingPlus)
register_method("jocor", JoCoR)
register_method("decoupling", Decoupling)
register_method("sop", SOP)
register_method("agce", AGCE)
register_method("anl", ANL)
register_method("dividemix", DivideMix)
register_method("josrc", JoSRC)


def create_method(name: str, *args: Any, **kwargs: Any) -> Method:
    return METHODS.create(name, *args, **kwargs)


def list_methods() -> list[str]:
    return METHODS.names()


__all__ = [
    "ACT",
    "AGCE",
    "ANL",
    "METHODS",
    "SOP",
    "CoTeaching",
    "CoTeachingPlus",
    "Decoupling",
    "DivideMix",
    "JoCoR",
    "JoSRC",
    "Method",
    "Standard",
    "create_method",
    "list_methods",
    "register_method",
]
