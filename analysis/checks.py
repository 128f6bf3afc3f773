"""Read a study directory's files and refuse malformed ones before anything is reported.

Every refusal is a :class:`ReportError` naming the file, the key or column and the value, raised while the files are
read (``analysis/load.py``), so the report command exits with status 2 and writes nothing. Refused: a file that is
not UTF-8 text (a UTF-8 BOM is fine), ``study.json`` fields of the wrong type (``space`` above all), missing columns,
duplicate trial ids, and text in a numeric column.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from moco.safe_yaml import short
from moco.vocabulary import EPOCH, PARAM_TYPES

#: columns every ``trials.csv`` written by ``study/results.py`` has (the metric is checked by name)
TRIAL_COLUMNS = ("trial_id", "status")
#: columns every non-empty ``history.csv`` has
HISTORY_COLUMNS = ("trial_id", EPOCH)
#: ``study.json`` fields read as text, when present and not null
TEXT_FIELDS = ("name", "kind", "metric", "mode", "status", "searcher", "scheduler")


class ReportError(ValueError):
    """The input cannot be reported on. The message says which path or name is wrong and what would be allowed."""


def read_text(path: Path) -> str:
    """The file's text: UTF-8 (an initial BOM is dropped), without NUL characters."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ReportError(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ReportError(f"{path}: not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r}); the "
                          "study writes UTF-8, so this file was replaced or damaged") from None
    if "\x00" in text:
        raise ReportError(f"{path}: not text (a NUL character at position {text.index(chr(0))}); the study writes "
                          "UTF-8 text, so this file was replaced or damaged")
    return text


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a UTF-8 file."""
    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise ReportError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(value, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_csv(path: Path, text_columns: Iterable[str] = ("trial_id", "variant", "error")) -> pd.DataFrame:
    """A CSV table from a UTF-8 file (empty: an empty frame); ``text_columns`` stay text ("00017" is not 17)."""
    text = read_text(path)
    try:
        return pd.read_csv(io.StringIO(text), dtype={c: str for c in text_columns})
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, ValueError) as e:
        raise ReportError(f"{path}: not a readable CSV ({e})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_meta(meta: dict[str, Any], path: Path) -> None:
    """``study.json``: text fields are text, and ``space`` is a mapping of parameter: spec (see :func:`check_space`)."""
    for key in TEXT_FIELDS:
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise ReportError(f"{path}: {key} = {short(meta[key])}: must be text")
    for key in ("settings", "budget", "base_config"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise ReportError(f"{path}: {key} = {short(meta[key])}: must be a mapping")
    check_space(meta.get("space"), path)


def check_space(space: Any, path: Path) -> None:
    """Each searched parameter as ``study/results.py`` writes it: a type, numeric bounds, a list of choices."""
    if space is None:
        return
    if not isinstance(space, dict):
        raise ReportError(f"{path}: space = {short(space)}: must be a mapping of parameter: {{type, low, high, ...}}")
    for name, spec in space.items():
        key = f"space.{name}"
        if not isinstance(spec, dict):
            raise ReportError(f"{path}: {key} = {short(spec)}: must be a mapping such as {{type: float, low: 0.1, "
                              "high: 1.0}")
        kind = spec.get("type", "float")
        if kind not in PARAM_TYPES:
            raise ReportError(f"{path}: {key}.type = {short(kind)}: one of {', '.join(PARAM_TYPES)}")
        for bound in ("low", "high"):
            if spec.get(bound) is not None and not _is_number(spec[bound]):
                raise ReportError(f"{path}: {key}.{bound} = {short(spec[bound])}: must be a finite number or null")
        if kind in ("float", "int") and _is_number(spec.get("low")) and _is_number(spec.get("high")) \
                and spec["low"] > spec["high"]:
            raise ReportError(f"{path}: {key}: low = {spec['low']} > high = {spec['high']}")
        if spec.get("log") is not None and not isinstance(spec["log"], bool):
            raise ReportError(f"{path}: {key}.log = {short(spec['log'])}: must be true or false")
        choices = spec.get("choices")
        if choices is not None and (not isinstance(choices, list) or not choices):
            raise ReportError(f"{path}: {key}.choices = {short(choices)}: must be a non-empty list")
        if kind == "categorical" and choices is None:
            raise ReportError(f"{path}: {key}.choices: missing (a categorical parameter lists its choices)")


def check_columns(frame: pd.DataFrame, required: Iterable[str], path: Path) -> None:
    """Refuse a file without one of ``required`` columns."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} (found: "
                          f"{short(list(frame.columns))})")


def check_unique_ids(frame: pd.DataFrame, path: Path) -> None:
    """One row per trial: a repeated ``trial_id`` would count a trial (and its CPU hours) several times."""
    repeated = frame["trial_id"][frame["trial_id"].duplicated()]
    if len(repeated):
        first = repeated.iloc[0]
        raise ReportError(f"{path}: trial_id {first!r} appears {int((frame['trial_id'] == first).sum())} times "
                          f"({repeated.nunique()} repeated id(s)): one row per trial")


def check_numeric(frame: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    """Every non-empty cell of ``columns`` (those present) must be a number (``nan``/``inf`` are numbers)."""
    for col in columns:
        if col not in frame.columns:
            continue
        values = frame[col]
        numbers = pd.to_numeric(values, errors="coerce")
        text = values.astype("string").str.strip()
        bad = values.notna() & numbers.isna() & text.ne("") & ~text.str.lower().isin(["nan", "none", "null"])
        if bad.any():
            row = bad.to_numpy().nonzero()[0][0]
            where = f"trial {frame['trial_id'].iloc[row]}" if "trial_id" in frame.columns else f"row {row + 2}"
            raise ReportError(f"{path}: column {col} holds {short(values.iloc[row])} ({where}, {int(bad.sum())} such "
                              "cell(s)): must be a number")
