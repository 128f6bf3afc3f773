"""The searched parameters of a space file (its ``search:`` section): :class:`Param`, read and checked with precise
errors, and :class:`SpaceError`, the refusal of every check of a space file (here and in study/space.py).

A parameter is a TrainConfig key with a type (float, int, categorical or fixed), its range or choices, and an
optional condition ``when`` on a parameter listed before it (``hard_negative_ratio < 1``, ``negatives == hcl``).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

from moco.config import field_names
from moco.safe_yaml import YamlError, load_value, short
from moco.vocabulary import PARAM_TYPES


PARAM_KEYS = {"float": ("type", "low", "high", "log", "step", "when"),
              "int": ("type", "low", "high", "log", "step", "when"),
              "categorical": ("type", "choices", "when"),
              "fixed": ("type", "value", "when")}
_CONDITION = re.compile(r"^\s*([A-Za-z_]\w*)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")


class SpaceError(ValueError):
    """A space file is malformed or inconsistent."""

    def __init__(self, source: str, key: str, message: str):
        super().__init__(f"{source}: {key}: {message}")
        self.source, self.key = source, key


def closest(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(map(str, options))})"


@dataclass
class Param:
    """One searched parameter."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] | None = None
    value: Any = None
    when: str | None = None

    def condition(self) -> tuple[str, str, Any] | None:
        """``(parameter, operator, value)`` of ``when``; the value is a plain YAML scalar (checked at load)."""
        if self.when is None:
            return None
        name, op, raw = _CONDITION.match(self.when).groups()
        return name, op, load_value(raw, f"when {self.when!r}")

    def active(self, params: dict[str, Any]) -> bool:
        """Whether a conditional parameter exists given the values drawn so far."""
        cond = self.condition()
        if cond is None:
            return True
        name, op, ref = cond
        if name not in params:
            return False
        value = params[name]
        return {"<": value < ref, "<=": value <= ref, ">": value > ref, ">=": value >= ref,
                "==": value == ref, "!=": value != ref}[op]

    def extremes(self) -> list[Any]:
        """Values that bound what this parameter can take (for validation against TrainConfig)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "fixed":
            return [self.value]
        return [self.low, self.high]

    def suggest(self, trial) -> Any:
        """Draw this parameter from an Optuna trial (define-by-run)."""
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        return self.value

    def grid_values(self, points: int) -> list[Any]:
        """Evenly spaced values for grid search (on the log scale where the parameter is log-scaled)."""
        if self.type in ("categorical", "fixed"):
            return self.extremes()
        if points == 1:
            return [self.low]
        if self.log:
            values = [math.exp(math.log(self.low) + i * (math.log(self.high) - math.log(self.low)) / (points - 1))
                      for i in range(points)]
        else:
            values = [self.low + i * (self.high - self.low) / (points - 1) for i in range(points)]
        if self.type == "int":
            return sorted({int(round(v)) for v in values})
        return [float(f"{v:.6g}") for v in values]


def load_params(section: Any, source: str) -> list[Param]:
    """The parameters of a ``search:`` section, in order; raise :class:`SpaceError` on the first problem."""
    if not isinstance(section, dict) or not section:
        raise SpaceError(source, "search", "a non-empty mapping of parameter: {type: ..., ...}")
    params = []
    for name, spec in section.items():
        key = f"search.{name}"
        if name not in field_names():
            raise SpaceError(source, key, "not a training config key" + closest(name, field_names()))
        if not isinstance(spec, dict):
            raise SpaceError(source, key, "a mapping such as {type: float, low: 0.1, high: 1.0}")
        kind = spec.get("type")
        if kind not in PARAM_TYPES:
            raise SpaceError(source, f"{key}.type", f"{kind!r}: one of " + ", ".join(PARAM_TYPES))
        for k in spec:
            if k not in PARAM_KEYS[kind]:
                raise SpaceError(source, f"{key}.{k}", f"unknown key for a {kind} parameter"
                                 + closest(k, PARAM_KEYS[kind]))
        param = Param(name=name, **spec)
        _check_param(param, key, source)
        params.append(param)
    names = [p.name for p in params]
    for i, p in enumerate(params):
        cond = p.condition()
        if cond and cond[0] not in names[:i]:
            raise SpaceError(source, f"search.{p.name}.when", f"{p.when!r} refers to {cond[0]!r}, which must be a "
                             "searched parameter listed before it")
        if cond and cond[1] in ("<", "<=", ">", ">="):
            ref = params[names.index(cond[0])]
            if not all(is_number(v) for v in ref.extremes()):
                raise SpaceError(source, f"search.{p.name}.when", f"{p.when!r}: {cond[0]} takes non-numeric "
                                 "values; compare it with == or !=")
    return params


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; accept it as the number it spells, as training keys do."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_param(p: Param, key: str, source: str) -> None:
    if p.type in ("float", "int"):
        for bound in ("low", "high", "step"):
            setattr(p, bound, _number(getattr(p, bound)))
            if p.type == "int" and isinstance(getattr(p, bound), float) and getattr(p, bound).is_integer():
                setattr(p, bound, int(getattr(p, bound)))
        for bound in ("low", "high"):
            value = getattr(p, bound)
            if value is None:
                raise SpaceError(source, f"{key}.{bound}", f"missing: a {p.type} parameter needs low and high")
            if not is_number(value) or (p.type == "int" and not isinstance(value, int)):
                raise SpaceError(source, f"{key}.{bound}", f"{short(value)}: must be a"
                                 f"{'n integer' if p.type == 'int' else ' finite number'}")
        if p.low > p.high:
            raise SpaceError(source, key, f"inverted range: low = {p.low} > high = {p.high}")
        if p.low == p.high:
            raise SpaceError(source, key, f"empty range: low = high = {p.low} (use type: fixed for a constant)")
        if not isinstance(p.log, bool):
            raise SpaceError(source, f"{key}.log", f"{short(p.log)}: true or false")
        if p.log and p.low <= 0:
            raise SpaceError(source, f"{key}.low", f"{p.low}: a log-scaled range must be > 0")
        if p.step is not None:
            if not is_number(p.step) or p.step <= 0 or p.log:
                raise SpaceError(source, f"{key}.step", f"{short(p.step)}: a number > 0, and not with log: true")
            if p.type == "int" and not isinstance(p.step, int):
                raise SpaceError(source, f"{key}.step", f"{p.step!r}: an int parameter needs an integer step")
            steps = (p.high - p.low) / p.step
            if abs(steps - round(steps)) > 1e-9 * max(1.0, abs(steps)):
                raise SpaceError(source, f"{key}.step", f"{p.step!r} does not divide the range [{p.low}, {p.high}] "
                                 "(Optuna would silently lower the upper bound): choose a step that does")
        if p.type == "float":
            p.low, p.high = float(p.low), float(p.high)
    elif p.type == "categorical":
        if not isinstance(p.choices, list) or not p.choices:
            raise SpaceError(source, f"{key}.choices", f"{short(p.choices)}: a non-empty list")
        if len(set(map(repr, p.choices))) != len(p.choices):
            raise SpaceError(source, f"{key}.choices", f"{short(p.choices)}: duplicate choices")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in p.choices):
            raise SpaceError(source, f"{key}.choices", f"{short(p.choices)}: plain values (numbers, strings, "
                             "true/false, null), not lists or mappings")
    elif p.value is None:
        raise SpaceError(source, f"{key}.value", "missing or null: a fixed parameter needs a value (to leave a key at "
                         "its base value, do not search it)")
    if p.when is not None:
        _check_condition(p, key, source)


def _check_condition(p: Param, key: str, source: str) -> None:
    if not isinstance(p.when, str) or not _CONDITION.match(p.when):
        raise SpaceError(source, f"{key}.when", f"{short(p.when)}: a condition such as 'hard_negative_ratio < 1' "
                         "or 'negatives == hcl'")
    try:
        _, op, value = p.condition()
    except YamlError as err:
        raise SpaceError(source, f"{key}.when",
                         f"{short(p.when)}: the value is not plain YAML ({err.reason})") from None
    ordered = op in ("<", "<=", ">", ">=")
    if ordered and not is_number(value):
        raise SpaceError(source, f"{key}.when", f"{short(p.when)}: {op} needs a finite number on its right")
    if not ordered and not (value is None or isinstance(value, (bool, str)) or is_number(value)):
        raise SpaceError(source, f"{key}.when", f"{short(p.when)}: {op} needs a number, a string, true/false or null")
