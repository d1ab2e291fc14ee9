"""Turning pydantic's errors into the contract's: a TaskValidationError whose details name the wire fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from hexlabs_tasks._exceptions import TaskValidationError

__all__ = ["details_from", "field_name", "validate", "validation_details"]

M = TypeVar("M", bound=BaseModel)
# Pydantic puts the member of a union (or a validator) it tried into the location; users only need the field.
_TAGS = {"bool", "int", "float", "str", "list", "dict", "none"}


def field_name(loc: tuple[Any, ...] | list[Any], prefix: str = "") -> str:
    """A pydantic error location as the wire field it names, e.g. ``request.params.a`` or ``retryOn.0``."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in _TAGS or "[" in p))]
    if parts and parts[0] in ("body", "query", "path", "header") and not prefix:
        parts = parts[1:]
    name = ".".join(parts)
    return f"{prefix}.{name}" if prefix and name else (prefix or name or "body")


def validation_details(exc: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """Pydantic's errors as the contract's ``details``: one entry per field, named in wire (camelCase) form."""
    return details_from(exc.errors(include_url=False), prefix)


def details_from(errors: Any, prefix: str = "") -> list[dict[str, Any]]:
    """Error dicts (pydantic's or FastAPI's) as ``details``, one per field (union members folded together)."""
    details: dict[str, dict[str, Any]] = {}
    for error in errors:
        field = field_name(tuple(error["loc"]), prefix)
        message = str(error["msg"]).removeprefix("Value error, ")
        details.setdefault(field, {"field": field, "message": message, "type": error["type"]})
    return list(details.values())


def validate(model: type[M], data: Any, *, prefix: str = "") -> M:
    """``model`` from a mapping (or the model itself); a :class:`TaskValidationError` naming the fields if not."""
    if isinstance(data, model):
        return data
    if isinstance(data, BaseModel):
        data = data.model_dump(exclude_unset=True)
    if not isinstance(data, Mapping):
        where = prefix or "body"
        raise TaskValidationError(
            f"{where} must be a JSON object",
            details=[{"field": where, "message": "must be a JSON object", "type": "model_type"}],
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = validation_details(exc, prefix)
        fields = ", ".join(sorted({d["field"] for d in details}))
        raise TaskValidationError(f"invalid input: {fields}", details=details) from exc
