"""Check a config value against its dataclass field type, converting where the meaning is unambiguous.

YAML 1.1 reads `1e-4` (no dot) as a string and `2024` as an int, so a value can arrive with the
wrong Python type while meaning the right thing; anything else is refused with the key, the value
and the expected type, before it reaches torch as an obscure TypeError.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Union


class TypeMismatch(ValueError):
    """The value cannot be read as the field's type."""


def coerce(value: Any, hint: Any) -> Any:
    """`value` as the type `hint` (int, float, bool, str, list[...], dict[...], unions, None)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, typing.get_args(hint))
    if origin is list:
        return _coerce_list(value, typing.get_args(hint)[0])
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeMismatch
        key_type, value_type = typing.get_args(hint)
        return {coerce(k, key_type): coerce(v, value_type) for k, v in value.items()}
    if hint is Any:
        return value
    if hint in (dict, list):  # unparametrised: the container type is all that is checked
        if not isinstance(value, hint if hint is dict else (list, tuple)):
            raise TypeMismatch
        return hint(value)
    if hint is type(None):
        if value is not None:
            raise TypeMismatch
        return None
    return _SCALARS[hint](value)


def describe(hint: Any) -> str:
    """'float', 'int or null', 'list of float', 'str, list of float or null', ..."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        names = [describe(arg) for arg in typing.get_args(hint)]
        return ", ".join(names[:-1]) + " or " + names[-1]
    if origin is list:
        return f"list of {describe(typing.get_args(hint)[0])}"
    if origin is dict or hint is dict:
        return "mapping"
    if hint is list:
        return "list"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _coerce_union(value: Any, members: tuple) -> Any:
    if value is None:
        if type(None) in members:
            return None
        raise TypeMismatch
    for member in members:
        if member is type(None):
            continue
        try:
            return coerce(value, member)
        except TypeMismatch:
            continue
    raise TypeMismatch


def _coerce_list(value: Any, element: Any) -> list:
    if not isinstance(value, (list, tuple)):
        raise TypeMismatch
    return [coerce(item, element) for item in value]


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeMismatch


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeMismatch
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise TypeMismatch


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeMismatch
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):  # '1e-4', '3E5', ' 0.5 ': YAML 1.1 leaves these as strings
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise TypeMismatch


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. train.name=2024
    raise TypeMismatch


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}
