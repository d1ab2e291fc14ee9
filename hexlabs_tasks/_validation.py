"""Turning pydantic's errors into the contract's: a TaskValidationError whose details name the wire fields."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from hexlabs_tasks._exceptions import TaskValidationError

__all__ = ["validate", "validation_details"]

M = TypeVar("M", bound=BaseModel)


def validation_details(exc: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """Pydantic's errors as the contract's ``details``: one entry per field, named in wire (camelCase) form."""
    details = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in error["loc"])
        field = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        message = error["msg"].removeprefix("Value error, ")
        details.append({"field": field, "message": message, "type": error["type"]})
    return details


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
