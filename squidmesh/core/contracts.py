"""JSON at the boundary: encoding values, rebuilding typed values, payload contracts.

Everything squidmesh stores is JSON produced here (through pydantic); nothing is pickled.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from typing import Any

import pydantic
import pydantic_core

from squidmesh.errors import PayloadError, UnstorableValueError, ValueTooLargeError, did_you_mean

__all__ = [
    "EncodeError",
    "decode",
    "encode",
    "json_text",
    "stored",
    "type_label",
    "validate_payload",
]

#: what ``int`` may hold and still be written and read as JSON text (Python refuses to
#: convert longer integers to and from text by default)
_MAX_INT_DIGITS = 4300
_INT_LIMIT = 10**_MAX_INT_DIGITS
_NUL_ESCAPE = "\\u0000"


class EncodeError(UnstorableValueError, TypeError):
    """A value cannot be represented as JSON; names the offending type."""


def encode(value: Any, *, what: str = "value") -> Any:
    """Turn ``value`` into plain JSON data (dicts, lists, str, numbers, bool, None)."""
    try:
        return pydantic_core.to_jsonable_python(value)
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as exc:
        problem = find_unstorable(value)
        if problem is not None and not problem[1].startswith("of type"):
            raise UnstorableValueError(_message(what, *problem), path=problem[0]) from None
        raise EncodeError(
            f"{what} of type {_unencodable_type(value)} cannot be stored as JSON: use "
            "plain data, a pydantic model or a dataclass"
        ) from exc


def stored(value: Any, *, what: str, max_bytes: int | None = None) -> Any:
    """The JSON squidmesh stores for ``value``: exactly what every later read and every
    replay gets back, on every store (``json.loads`` of the text written).

    Refuses, naming ``what`` and the path inside the value, what a database would refuse
    or change (NUL characters, lone surrogates, NaN and Infinity, integers of more than
    4300 digits) and values whose JSON exceeds ``max_bytes`` (None: no limit).
    """
    return json.loads(json_text(encode(value, what=what), what=what, max_bytes=max_bytes))


def json_text(data: Any, *, what: str, max_bytes: int | None = None) -> str:
    """The JSON text of encoded ``data``, checked as ``stored`` describes."""
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        size = len(text.encode("utf-8"))
    except (ValueError, UnicodeEncodeError):
        found = find_unstorable(data) or ("$", "cannot be written as JSON")
        raise UnstorableValueError(_message(what, *found), path=found[0]) from None
    if _NUL_ESCAPE in text:
        problem = find_unstorable(data)
        if problem is not None:  # not merely a literal backslash followed by "u0000"
            raise UnstorableValueError(_message(what, *problem), path=problem[0])
    if max_bytes is not None and size > max_bytes:
        raise ValueTooLargeError(
            f"{what} is {size:,} bytes of JSON; this Mesh stores at most {max_bytes:,} "
            "(store large data elsewhere and pass a reference, or raise "
            "Mesh(max_value_bytes=...))"
        )
    return text


def find_unstorable(value: Any) -> tuple[str, str] | None:
    """(JSON path, what is wrong there) for the first part of ``value`` that cannot be
    stored as JSON text, or None."""
    stack: list[tuple[str, Any]] = [("$", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            problem = _bad_text(item)
            if problem:
                return path, f"is a string that {problem}"
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if item.bit_length() > 14_000 and abs(item) >= _INT_LIMIT:
                return path, f"is an integer of more than {_MAX_INT_DIGITS} digits"
        elif isinstance(item, float):
            if math.isnan(item) or math.isinf(item):
                return path, f"is {item!r}: JSON cannot hold NaN or Infinity"
        elif isinstance(item, Mapping):
            children = []
            for key, child in item.items():
                if isinstance(key, str) and _bad_text(key):
                    return f"{path}{_member(key)}", f"is a key that {_bad_text(key)}"
                children.append((f"{path}{_member(str(key))}", child))
            stack.extend(reversed(children))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed([(f"{path}[{i}]", child) for i, child in enumerate(item)]))
        else:
            try:
                plain = pydantic_core.to_jsonable_python(item)
            except Exception:
                return path, f"of type {type(item).__module__}.{type(item).__qualname__}"
            if type(plain) is not type(item):
                stack.append((path, plain))
    return None


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character (\\x00), which PostgreSQL cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        return f"contains a lone surrogate ({char!r}), which is not valid UTF-8"
    return None


def _member(key: str) -> str:
    return f".{key}" if key.isidentifier() else f"[{json.dumps(key)}]"


def _message(what: str, path: str, problem: str) -> str:
    where = "the value" if path == "$" else path
    return (
        f"{what} cannot be stored: {where} {problem} (remove it, or encode the data, "
        "e.g. as a string or base64)"
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
    dumped = instance.model_dump(mode="json", by_alias=False)
    try:
        return dict(stored(dumped, what="the payload"))
    except UnstorableValueError as exc:
        where = (exc.path or "$").removeprefix("$").lstrip(".") or "payload"
        raise PayloadError(str(exc), invalid_types={where: "a storable JSON value"}) from None


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
