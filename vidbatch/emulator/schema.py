"""A tiny declarative validator for the providers' model inputs.

Errors come out in fal's pydantic-like shape (``loc``, ``msg``, ``type``,
``input``, ``ctx``, ``url``); Scenario and removebgvideo turn the first error
into their own message format. The ``type`` values are fal's documented ones
(``missing``, ``one_of``, ``greater_than_equal``, ``less_than_equal``,
``feature_not_supported``) plus pydantic's standard ``*_type`` errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

FAL_ERRORS_URL = "https://docs.fal.ai/errors#"


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # enum | bool | number | int | str | list
    default: Any = None
    choices: Sequence[Any] = ()
    ge: float | None = None
    le: float | None = None
    required: bool = False


def error(name: str | None, msg: str, type_: str, value: Any = None, ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"loc": ["body", name] if name else ["body"], "msg": msg, "type": type_,
                           "url": FAL_ERRORS_URL + type_}
    if value is not None:
        err["input"] = value
    if ctx:
        err["ctx"] = ctx
    return err


def validate(body: Any, schema: Sequence[Field]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return (values with defaults, errors). Unknown keys are ignored (pydantic's default)."""
    if not isinstance(body, dict):
        return {}, [error(None, "Input should be a valid dictionary or object", "model_attributes_type", body)]
    values: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for f in schema:
        if f.name not in body or body[f.name] is None:
            if f.required:
                errors.append(error(f.name, "Field required", "missing"))
            else:
                values[f.name] = f.default
            continue
        value = body[f.name]
        err = _check(f, value)
        if err is not None:
            errors.append(err)
        else:
            values[f.name] = float(value) if f.kind == "number" else value
    return values, errors


def _check(f: Field, value: Any) -> dict[str, Any] | None:
    if f.kind == "bool":
        if not isinstance(value, bool):
            return error(f.name, "Input should be a valid boolean", "bool_type", value)
        return None
    if f.kind == "str":
        if not isinstance(value, str) or not value:
            return error(f.name, "Input should be a valid string", "string_type", value)
        return None
    if f.kind == "list":
        if not isinstance(value, list):
            return error(f.name, "Input should be a valid list", "list_type", value)
        return None
    if f.kind == "enum":
        if not isinstance(value, str) or value not in f.choices:
            expected = ", ".join(f"'{c}'" for c in f.choices)
            return error(f.name, f"Input should be {expected}", "one_of", value, {"expected": list(f.choices)})
        return None
    if f.kind in ("number", "int"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "int" if f.kind == "int" else "float"
            noun = "an integer" if f.kind == "int" else "a number"
            return error(f.name, f"Input should be a valid {noun}", f"{kind}_type", value)
        if f.kind == "int" and float(value) != int(value):
            return error(f.name, "Input should be a valid integer", "int_type", value)
        if f.ge is not None and value < f.ge:
            return error(f.name, f"Input should be greater than or equal to {_num(f.ge)}", "greater_than_equal",
                         value, {"ge": _num(f.ge)})
        if f.le is not None and value > f.le:
            return error(f.name, f"Input should be less than or equal to {_num(f.le)}", "less_than_equal",
                         value, {"le": _num(f.le)})
        return None
    raise ValueError(f"unknown field kind {f.kind}")


def _num(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def first_message(errors: list[dict[str, Any]], camel: bool = False) -> str:
    """One human line for the first error: ``'model': Input should be ...``."""
    err = errors[0]
    name = err["loc"][-1] if len(err["loc"]) > 1 else "body"
    return f"Invalid parameter '{name}': {err['msg']}"
