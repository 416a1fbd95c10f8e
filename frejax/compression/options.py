"""Compressor options: one declaration per option gives its default, allowed values and check.

A compressor class declares ``section`` (its config section,
``compressor.<section>``) and ``OPTIONS`` (name -> ``Option``, or a nested
mapping for a sub-section such as Fre-Res's ``absorber``). The config schema
(``frejax.config_lib``) is built from these declarations, so defaults and
allowed values live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: its default (whose type the value must have), what it means, what it allows."""

    default: Any
    help: str = ""
    choices: tuple[Any, ...] = ()
    check: Callable[[Any], bool] | None = None
    requirement: str = ""  # what ``check`` asks, for the error message


Schema = Mapping[str, "Option | Schema"]


def non_negative(help_text: str) -> Option:
    """An int >= 0 where 0 means "chosen by the budget"."""
    return Option(0, help_text, check=lambda v: v >= 0, requirement="an int >= 0 (0 = chosen by"
                  " the budget)")


def defaults(schema: Schema) -> dict[str, Any]:
    """The schema's defaults as a nested plain dict."""
    return {k: defaults(o) if isinstance(o, Mapping) else o.default for k, o in schema.items()}


def resolve(prefix: str, schema: Schema, given: Any = None) -> dict[str, Any]:
    """``given`` (a dict, a ConfigDict or ``None``) over the defaults, checked.

    Returns a nested plain dict with every option of ``schema``. Raises
    ``ValueError`` naming ``<prefix>.<key>`` for an unknown key, a value of the
    wrong type, a value outside ``choices`` or one that fails ``check``.
    """
    given = {} if given is None else dict(given.items())
    unknown = sorted(set(given) - set(schema))
    if unknown:
        raise ValueError(f"{prefix}.{unknown[0]}: not an option of {prefix}; its options are"
                         f" {sorted(schema)}")
    out = {}
    for key, opt in schema.items():
        name = f"{prefix}.{key}"
        if isinstance(opt, Mapping):
            out[key] = resolve(name, opt, given.get(key))
            continue
        value = given.get(key, opt.default)
        out[key] = _checked(name, opt, opt.default if value is None else value)
    return out


def same_kind(default: Any, value: Any) -> bool:
    """Whether ``value`` may stand where ``default`` does (bool, int, float-or-int, str, ...)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return True


def _checked(name: str, opt: Option, value: Any) -> Any:
    default = opt.default
    ok = same_kind(default, value)
    if ok and isinstance(default, float):
        value = float(value)
    if not ok:
        raise ValueError(f"{name} must be a {type(default).__name__}, got {value!r}")
    if opt.choices and value not in opt.choices:
        raise ValueError(f"{name} must be one of {opt.choices}, got {value!r}")
    if opt.check is not None and not opt.check(value):
        raise ValueError(f"{name} must be {opt.requirement}, got {value!r}")
    return value


def changed(schema: Schema, given: Any, prefix: str) -> list[str]:
    """Keys of ``given`` (``<prefix>.<key>``) whose values differ from the schema's defaults."""
    out = []
    for key, value in ({} if given is None else dict(given.items())).items():
        opt = schema.get(key)
        if isinstance(opt, Mapping):
            out += changed(opt, value, f"{prefix}.{key}")
        elif opt is None or value != opt.default:
            out.append(f"{prefix}.{key}")
    return out
