"""The shape of every results file a step reads, checked by each reader before it uses one.

JSON results files (evaluation, probe and oracle metrics, headline files, an activation cache's manifest, a
provenance record) are checked against their schema in cocoracle/schemas/results.schema.yaml, tables (CSV,
TSV, parquet) for their columns' types. A file of the wrong shape is one InputError line naming the file and the
field: `results/seed-0/eval/stage-1.json: stage: 'one' is not of type 'integer'`, never a traceback or a
silently empty row.
"""
from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import yaml

from cocoracle.config import InputError, _key_of, _Validator

KINDS = ("eval", "probes", "oracle", "interventions", "headline", "manifest", "provenance_record")
# what each table column must hold: "integer", "number" (NaN allowed: an empty cell), "string" or "boolean"
COLUMN_TYPES = ("integer", "number", "string", "boolean")


@functools.cache
def _validators() -> dict[str, jsonschema.protocols.Validator]:
    schema = yaml.safe_load(resources.files("cocoracle").joinpath("schemas/results.schema.yaml").read_text())
    return {kind: _Validator({**schema[kind], "$defs": schema["$defs"]}) for kind in KINDS}


def _deepest(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """Where alternatives without a description of their own all failed (a probe or null, a number or a mapping),
    the error of the alternative that fits the value's kind, which names the field inside it."""
    while error.validator in ("anyOf", "oneOf") and "description" not in error.schema and error.context:
        fitting = [e for e in error.context if not (e.validator == "type" and not e.relative_path)]
        error = jsonschema.exceptions.best_match(fitting or error.context)
    return error


def _message(error: jsonschema.ValidationError) -> str:
    """One line: the schema's own description where it has one (an alternative failed), else jsonschema's."""
    if error.validator == "required":
        return "missing"
    if error.validator in ("anyOf", "oneOf") and "description" in error.schema:
        return error.schema["description"]
    if "propertyNames" in error.schema_path:
        return f"key {error.instance!r} is not allowed (keys match {error.schema.get('pattern', '?')})"
    message = error.message.splitlines()[0]
    return message if len(message) <= 160 else message[:157] + "..."


def check(data: Any, kind: str, path: str | Path) -> Any:
    """`data`, read from `path`, if it has the shape of a `kind` results file; else InputError naming the field."""
    errors = list(_validators()[kind].iter_errors(data))
    if errors:
        named = [e for e in errors if e.absolute_path or e.validator != "anyOf"]  # a field's before "no split"
        error = _deepest(jsonschema.exceptions.best_match(named or errors))
        if error.validator == "type" and not error.absolute_path:
            raise InputError(f"{path}: not a JSON object (a {type(data).__name__})")
        if error.validator in ("anyOf", "oneOf") and not error.absolute_path:
            raise InputError(f"{path}: {_message(error)}")
        raise InputError(f"{path}: {_key_of(error)}: {_message(error)}")
    return data


def read_json(path: str | Path, kind: str) -> dict[str, Any]:
    """A results JSON file of `kind`, checked: one line naming the file when missing, not JSON or misshapen."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: a directory, not a JSON file") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not JSON ({str(exc).splitlines()[0]})") from None
    return check(data, kind, path)


def _holds(values: pd.Series, kind: str) -> pd.Series:
    """Which cells hold a value of `kind` (or are empty, for numbers and strings)."""
    if kind == "boolean":
        return values.map(lambda v: isinstance(v, bool) or str(v) in ("True", "False"))
    if kind == "string":
        return values.isna() | values.map(lambda v: isinstance(v, str))
    numbers = pd.to_numeric(values, errors="coerce")
    ok = numbers.notna() | values.isna()
    if kind == "integer":
        ok &= values.notna() & (numbers.fillna(0) % 1 == 0)
    return ok


def check_columns(table: pd.DataFrame, columns: dict[str, str], path: str | Path) -> pd.DataFrame:
    """`table`, read from `path`, if it has each of `columns` holding values of its type (COLUMN_TYPES)."""
    for name, kind in columns.items():
        if name not in table.columns:
            raise InputError(f"{path}: missing column {name!r}")
        bad = ~_holds(table[name], kind)
        if bad.any():
            first = table[name][bad].iloc[0]
            first = first.item() if hasattr(first, "item") else first  # a numpy scalar as Python writes it
            raise InputError(f"{path}: column {name!r}: {first!r} (row {int(bad.to_numpy().argmax()) + 1}) is not "
                             f"{'an' if kind == 'integer' else 'a'} {kind}")
    return table
