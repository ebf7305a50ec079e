"""Reading settings: `section.key=value` overrides (`--set`) and config.yaml mappings, each value
type-checked against the field it sets, every mistake one `UserError` sentence naming the key.

The method section is polymorphic: its class is the chosen method's `Settings` (config.py's
`METHOD_SETTINGS`), so `method.name` decides which `method.<key>`s exist. Overrides therefore
apply `method.name` first, whatever its position on the command line.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import fields
from typing import Any, Literal

from asymco.config import (
    DEFAULT_METHOD,
    METHOD_SETTINGS,
    SECTIONS,
    MethodSettings,
    RunConfig,
)
from asymco.errors import UserError

MOVED_KEYS = {"optim.ntm_lr_mode": "method.ntm_lr_mode", "optim.ntm_lr": "method.ntm_lr"}
"""Settings that moved to the method that owns them; the old spelling keeps working, in
`--set` and in config.yaml files written before the move."""
TOP_FIELDS = frozenset(f.name for f in fields(RunConfig)) - set(SECTIONS)


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(values: dict[str, Any]) -> RunConfig:
    """Rebuild a `RunConfig` from `to_dict` output (e.g. a run directory's config.yaml).

    Raises:
        UserError: naming the key, for anything `to_dict` could not have written: an unknown
            section or key, a section that is not a mapping, or a value of the wrong type.
    """
    if not isinstance(values, dict):
        raise UserError(f"a configuration must be a mapping of settings, got {_shown(values)}")
    for key in values:
        if key not in TOP_FIELDS and key not in SECTIONS:
            raise UserError(
                f"unknown setting {key!r} in the configuration; its sections are "
                f"{', '.join(SECTIONS)}"
            )
    top = {
        k: _checked_value(v, _hints(RunConfig)[k], k) for k, v in values.items() if k in TOP_FIELDS
    }
    given = {name: values.get(name, {}) for name in SECTIONS}
    for name, section in given.items():
        if not isinstance(section, dict):
            raise UserError(
                f"configuration section {name} must be a mapping of settings, got {_shown(section)}"
            )
    given = _moved_to_method(given)
    sections = {name: _section_from_dict(name, section) for name, section in given.items()}
    return RunConfig(**top, **sections)


def _moved_to_method(given: dict[str, dict]) -> dict[str, dict]:
    """A config.yaml from before the method owned its settings: move those keys there."""
    given = {name: dict(section) for name, section in given.items()}
    for old, new in MOVED_KEYS.items():
        (old_section, key), (new_section, new_key) = old.split("."), new.split(".")
        if key in given[old_section]:
            value = given[old_section].pop(key)
            given[new_section].setdefault(new_key, value)
    return given


def _section_from_dict(name: str, given: dict) -> Any:
    section_type = _method_class(given) if name == "method" else _hints(RunConfig)[name]
    hints = _hints(section_type)
    kept = {}
    for key, value in given.items():
        if key in hints:
            kept[key] = _checked_value(value, hints[key], f"{name}.{key}")
        elif not (name == "method" and _is_another_methods_default(key, value)):
            raise UserError(
                f"unknown setting {f'{name}.{key}'!r} in the configuration; "
                f"{_known_keys(name, section_type, key)}"
            )
    return section_type(**kept)


def _method_class(given: dict) -> type[MethodSettings]:
    name = _checked_value(given.get("name", DEFAULT_METHOD), str, "method.name")
    return METHOD_SETTINGS.get(name)


def _is_another_methods_default(key: str, value: Any) -> bool:
    """True for another method's setting at its default value: what a config.yaml written
    before each method had its own settings holds for them (it carries no information)."""
    for name in METHOD_SETTINGS.names():
        for f in fields(METHOD_SETTINGS.get(name)):
            if f.name == key and type(value) is type(f.default) and value == f.default:
                return True
    return False


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `section.key=value` strings, each type-checked against the field it sets.

    `method.name` is applied first: it chooses the method, and with it which method keys
    exist. Switching methods keeps the settings the two methods share (label smoothing).
    """
    items = []
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {_shown(item)} must look like section.key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        items.append((MOVED_KEYS.get(key, key), text, key))
    items.sort(key=lambda item: item[0] != "method.name")  # stable: the rest keep their order
    for key, text, given in items:
        cfg = _apply(cfg, key, text, given if given == key else f"{given} (now {key})")
    return cfg


def _apply(cfg: RunConfig, key: str, text: str, shown: str) -> RunConfig:
    """`cfg` with setting `key` parsed from `text`; messages name the key as the user wrote
    it (`shown`)."""
    parts = key.split(".")
    if len(parts) == 1 and parts[0] in TOP_FIELDS:
        value = _parse_scalar(text, _hints(RunConfig)[parts[0]], key)
        return dataclasses.replace(cfg, **{parts[0]: value})
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise UserError(
            f"unknown setting {_shown(key)}; settings look like section.key with section "
            f"one of {', '.join(SECTIONS)}"
        )
    section_name, name = parts
    section = getattr(cfg, section_name)
    if key == "method.name":
        return dataclasses.replace(cfg, method=switch_method(section, text.strip()))
    hints = _hints(type(section))
    if name not in hints:
        raise UserError(
            f"unknown setting {_shown(shown)}; {_known_keys(section_name, type(section), name)}"
        )
    value = _parse_scalar(text.strip(), hints[name], shown)
    return dataclasses.replace(cfg, **{section_name: dataclasses.replace(section, **{name: value})})


def switch_method(current: MethodSettings, name: str) -> MethodSettings:
    """The settings of method `name`, keeping the values of the keys it shares with `current`."""
    cls = METHOD_SETTINGS.get(name)
    shared = {f.name for f in fields(current)} & {f.name for f in fields(cls)} - {"name"}
    return cls(name=name, **{key: getattr(current, key) for key in shared})


def _known_keys(section_name: str, section_type: type, key: str = "") -> str:
    """The end of an unknown-key sentence: which keys the section has, and for the method
    section, which other methods own the key, if any do."""
    keys = ", ".join(sorted(_hints(section_type)))
    if section_name != "method":
        return f"{section_name} has: {keys}"
    owners = [n for n in METHOD_SETTINGS.names() if key in _hints(METHOD_SETTINGS.get(n))]
    owned = f" ({key} is a setting of {', '.join(owners)})" if owners else ""
    return f"method {section_type().name} has: {keys}{owned}"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _shown(value: Any) -> str:
    """`repr(value)`, cut to a readable length for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _checked_value(value: Any, annotation: Any, key: str) -> Any:
    """`value` if it is of type `annotation` (bool, int, float, str, Literal, X | None)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _checked_value(value, inner, key)
    if origin is Literal:
        ok = isinstance(value, str) and value in args
        what = f"one of {', '.join(map(str, args))}"
    elif annotation is bool:
        ok, what = isinstance(value, bool), "true or false"
    elif annotation is int:
        ok, what = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif annotation is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and abs(value) < 1e308 and math.isfinite(value)  # a huge int is no float
        what = "a finite number"
    else:
        ok, what = isinstance(value, str), "text"
    if not ok:
        raise UserError(f"{key} must be {what}, got {_shown(value)}")
    return value


def _parse_scalar(text: str, annotation: Any, key: str) -> Any:
    """Parse `text` as a value of `annotation` (bool, int, float, str, Literal, X | None)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse_scalar(text, inner, key)
    if origin is Literal:
        if text not in args:
            raise UserError(f"{key} must be one of {', '.join(map(str, args))}, got {_shown(text)}")
        return text
    if annotation is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise UserError(f"{key} must be true or false, got {_shown(text)}")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise UserError(f"{key} must be a whole number, got {_shown(text)}") from None
    if annotation is float:
        try:
            value = float(text)
        except ValueError:
            raise UserError(f"{key} must be a number, got {_shown(text)}") from None
        if not math.isfinite(value):
            raise UserError(f"{key} must be a finite number, got {_shown(text)}")
        return value
    return text
