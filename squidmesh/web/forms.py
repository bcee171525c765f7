"""A trigger's payload model as an HTML form, and a submitted form back as a payload.

Each field of the pydantic model becomes one input chosen by its annotation: text,
number, a true/false choice, a date or a choice of literal/enum values; anything else
(lists, dicts, nested models) is a JSON text area. Fields left blank are left out of the
payload, so the model's defaults apply exactly as they do through ``start_run``. The
values are handed to ``start_run`` as text (pydantic's lax mode turns "11" into 11),
so the one validation is the one the API does, with its ``PayloadError``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

import pydantic
from pydantic_core import PydanticUndefined

__all__ = ["Field", "FormError", "fields_of", "payload_from_form"]


class FormError(ValueError):
    """A form value that cannot even be handed to the API (JSON that does not parse)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    input: str  # text | number | decimal | bool | date | datetime | choice | json
    required: bool
    default: str  # shown as a hint; empty when there is none
    choices: tuple[str, ...] = ()
    description: str = ""
    type_label: str = ""


def _strip_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _input_for(annotation: Any) -> tuple[str, tuple[str, ...]]:
    inner = _strip_optional(annotation)
    if typing.get_origin(inner) is typing.Literal:
        return "choice", tuple(str(v) for v in typing.get_args(inner))
    if isinstance(inner, type):
        if issubclass(inner, bool):
            return "bool", ("true", "false")
        if issubclass(inner, enum.Enum):
            return "choice", tuple(str(member.value) for member in inner)
        if issubclass(inner, int):
            return "number", ()
        if issubclass(inner, float):
            return "decimal", ()
        if issubclass(inner, str):
            return "text", ()
        if issubclass(inner, dt.datetime):
            return "datetime", ()
        if issubclass(inner, dt.date):
            return "date", ()
    return "json", ()


def _label(annotation: Any) -> str:
    name = getattr(annotation, "__name__", None)
    if name and not typing.get_args(annotation):
        return str(name)
    return str(annotation).replace("typing.", "")


def _default_text(info: Any) -> str:
    if info.default is not PydanticUndefined and info.default is not None:
        value = info.default
        if isinstance(value, enum.Enum):
            value = value.value
        if isinstance(value, (str, int, float, bool)):
            return json.dumps(value) if isinstance(value, bool) else str(value)
        try:
            return json.dumps(pydantic.TypeAdapter(Any).dump_python(value, mode="json"))
        except (TypeError, ValueError):
            return ""
    if info.default_factory is not None:
        return "computed when the run starts"
    return ""


def fields_of(model: type[pydantic.BaseModel] | None) -> list[Field]:
    """The form fields of a payload model (none without one)."""
    if model is None:
        return []
    found = []
    for name, info in model.model_fields.items():
        kind, choices = _input_for(info.annotation)
        found.append(
            Field(
                name=name,
                input=kind,
                required=info.is_required(),
                default=_default_text(info),
                choices=choices,
                description=info.description or "",
                type_label=_label(info.annotation),
            )
        )
    return found


def payload_from_form(fields: list[Field], form: Mapping[str, str]) -> dict[str, Any]:
    """The payload a submitted form describes: blank fields are left out; JSON fields
    are parsed (a ``FormError`` when they do not parse); the rest stays text."""
    payload: dict[str, Any] = {}
    for field in fields:
        raw = form.get(f"field.{field.name}", "")
        if not raw.strip():
            continue
        if field.input == "json":
            try:
                payload[field.name] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise FormError(field.name, f"not valid JSON ({exc.msg})") from None
        else:
            payload[field.name] = raw
    return payload
