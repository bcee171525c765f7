"""JSON at the boundary: encoding values, rebuilding typed values, payload contracts.

Everything squidmesh stores is JSON produced here (through pydantic); nothing is pickled.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import pydantic
import pydantic_core

from squidmesh.errors import PayloadError, ValueTooLargeError, did_you_mean

__all__ = ["EncodeError", "check_size", "decode", "encode", "type_label", "validate_payload"]


class EncodeError(TypeError):
    """A value cannot be represented as JSON; names the offending type."""


def encode(value: Any, *, what: str = "value") -> Any:
    """Turn ``value`` into plain JSON data (dicts, lists, str, numbers, bool, None)."""
    try:
        return pydantic_core.to_jsonable_python(value)
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as exc:
        raise EncodeError(
            f"{what} of type {_unencodable_type(value)} cannot be stored as JSON: use "
            "plain data, a pydantic model or a dataclass"
        ) from exc


def check_size(data: Any, max_bytes: int | None, *, what: str) -> None:
    """Refuse encoded ``data`` that strict JSON cannot hold (NaN, Infinity) or whose JSON
    exceeds ``max_bytes`` (None: no limit)."""
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise EncodeError(
            f"{what} contains NaN or Infinity, which JSON cannot store: return None or a "
            "string instead"
        ) from None
    if max_bytes is None:
        return
    size = len(text.encode())
    if size > max_bytes:
        raise ValueTooLargeError(
            f"{what} is {size:,} bytes of JSON; this Mesh stores at most {max_bytes:,} "
            "(store large data elsewhere and pass a reference, or raise "
            "Mesh(max_value_bytes=...))"
        )


def _unencodable_type(value: Any) -> str:
    """Name the innermost value pydantic could not encode, for a useful message."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.values())
            continue
        if isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
            continue
        try:
            pydantic_core.to_jsonable_python(item)
        except Exception:
            return f"{type(item).__module__}.{type(item).__qualname__}"
    return f"{type(value).__module__}.{type(value).__qualname__}"


@functools.lru_cache(maxsize=1024)
def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(annotation)


def decode(data: Any, annotation: Any) -> Any:
    """Rebuild ``data`` (JSON) into ``annotation``; untyped values come back unchanged."""
    if annotation is Any or annotation is None or annotation is type(None):
        return data
    try:
        adapter = _adapter(annotation)
    except TypeError:  # unhashable or exotic annotation: build it uncached
        adapter = pydantic.TypeAdapter(annotation)
    return adapter.validate_python(data)


def type_label(annotation: Any) -> str:
    """A short human name for a type, used in payload error messages."""
    name = getattr(annotation, "__name__", None)
    if name and not getattr(annotation, "__args__", None):
        return str(name)
    return str(annotation).replace("typing.", "")


def validate_payload(
    model: type[pydantic.BaseModel] | None, payload: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Validate ``payload`` against a trigger's model and return the stored JSON form.

    Defaults and default factories are resolved here, once, so a stored payload never
    changes meaning when it is read back later. Unknown fields are refused even when the
    model itself would ignore them.
    """
    data: Mapping[str, Any] = {} if payload is None else payload
    if isinstance(data, pydantic.BaseModel):
        data = data.model_dump()
    if not isinstance(data, Mapping):
        raise PayloadError(
            f"invalid payload: expected a mapping of fields, got {type(data).__name__}"
        )
    if model is None:
        if data:
            raise PayloadError(unknown_fields=[str(k) for k in data])
        return {}
    known: set[str] = set()
    for field_name, info in model.model_fields.items():
        known.add(field_name)
        if info.alias:
            known.add(info.alias)
    unknown = sorted(str(k) for k in data if k not in known)
    missing: list[str] = []
    invalid: dict[str, str] = {}
    reasons: dict[str, str] = {}
    try:
        instance = model.model_validate(dict(data))
    except pydantic.ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(part) for part in err["loc"]) or "payload"
            top = str(err["loc"][0]) if err["loc"] else "payload"
            if err["type"] == "missing":
                missing.append(loc)
            elif err["type"] == "extra_forbidden":
                if top not in unknown:
                    unknown.append(top)
            else:
                field = model.model_fields.get(top)
                invalid[loc] = type_label(field.annotation) if field else str(err["msg"])
                # pydantic's own words ("String should have at least 3 characters"):
                # the expected type alone cannot explain a failed constraint.
                reasons[loc] = str(err["msg"])
        order = list(model.model_fields)
        missing.sort(key=lambda f: order.index(f.split(".")[0]) if f.split(".")[0] in order else 0)
        raise PayloadError(
            missing_fields=missing,
            unknown_fields=unknown,
            invalid_types=invalid,
            reasons=reasons,
            suggestions=_suggestions(unknown, model),
        ) from exc
    if unknown:
        raise PayloadError(unknown_fields=unknown, suggestions=_suggestions(unknown, model))
    return dict(instance.model_dump(mode="json", by_alias=False))


def _suggestions(unknown: list[str], model: type[pydantic.BaseModel]) -> dict[str, str]:
    """Unknown field -> the declared field it is probably a typo of."""
    found: dict[str, str] = {}
    for name in unknown:
        match = did_you_mean(name, model.model_fields)
        if match is not None:
            found[name] = match
    return found


def load_payload(model: type[pydantic.BaseModel] | None, stored: Mapping[str, Any]) -> Any:
    """Rebuild the model instance a workflow receives from a stored payload."""
    if model is None:
        return None
    return model.model_validate(dict(stored))
