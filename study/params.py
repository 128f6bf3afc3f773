"""The searched parameters of a space file (its ``search:`` section): :class:`Param`, a pydantic model validated once
as the file is read, and :class:`SpaceError`, the refusal of every check of a space file (here, in study/settings.py
and in study/space.py), into which :func:`validated` turns pydantic's errors.

A parameter is a TrainConfig key with a type (float, int, categorical or fixed), its range or choices, and an
optional condition ``when`` on a parameter listed before it (``hard_negative_ratio < 1``, ``negatives == hcl``).
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from moco.config import field_names
from moco.safe_yaml import YamlError, load_value, short
from moco.vocabulary import PARAM_TYPES


PARAM_KEYS = {"float": ("type", "low", "high", "log", "step", "when"),
              "int": ("type", "low", "high", "log", "step", "when"),
              "categorical": ("type", "choices", "when"),
              "fixed": ("type", "value", "when")}
_CONDITION = re.compile(r"^\s*([A-Za-z_]\w*)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")
#: how every model of a space file validates: unknown keys refused, no coercion (``"3"`` is not 3, ``true`` not 1),
#: finite numbers only, and immutable once read
STRICT = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class SpaceError(ValueError):
    """A space file is malformed or inconsistent."""

    def __init__(self, source: str, key: str, message: str):
        super().__init__(f"{source}: {key}: {message}")
        self.source, self.key = source, key


def closest(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(map(str, options))})"


def refuse(key: str, message: str) -> PydanticCustomError:
    """A refusal from a model's validator: ``key`` relative to the model ("" for the model itself), and why."""
    return PydanticCustomError("space", "{message}", {"key": key, "message": message})


def validated(model: type[BaseModel], data: Any, source: str, name: Callable[[str], str], **context: Any):
    """``model`` validated from ``data`` (``context``: the validators' context); pydantic's first error becomes a
    :class:`SpaceError` naming the file, the key (``name`` of the model's key) and the bad value with what is allowed
    (the field's description)."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as err:
        error = err.errors()[0]
        ctx = error.get("ctx") or {}
        if error["type"] == "space":
            raise SpaceError(source, name(ctx["key"]), ctx["message"]) from None
        key = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] == "extra_forbidden":
            raise SpaceError(source, name(key), "unknown key" + closest(key, model.model_fields)) from None
        field = model.model_fields.get(key)
        allowed = field.description if field is not None and field.description else error["msg"]
        raise SpaceError(source, name(key), f"{short(error['input'])}: {allowed}") from None


def under(prefix: str) -> Callable[[str], str]:
    """How a model's keys are named in errors: ``prefix.key`` (the model itself: ``prefix``)."""
    return lambda key: f"{prefix}.{key}" if key else prefix


class Param(BaseModel):
    """One searched parameter (its ``name`` is its key in ``search:``)."""

    model_config = STRICT

    name: str
    type: Literal[PARAM_TYPES]
    low: int | float | None = Field(None, description="must be a finite number")
    high: int | float | None = Field(None, description="must be a finite number")
    log: bool = Field(False, description="true or false")
    step: int | float | None = Field(None, description="a number > 0, and not with log: true")
    choices: list[Any] | None = Field(None, description="a non-empty list")
    value: Any = None
    when: str | None = Field(None, description="a condition such as 'hard_negative_ratio < 1' or 'negatives == hcl'")

    @model_validator(mode="before")
    @classmethod
    def _keys_of_its_type(cls, data: Any, info: ValidationInfo) -> Any:
        """The keys its type allows (with a hint for a misspelt one); numbers written as YAML strings read."""
        if not isinstance(data, dict):
            raise refuse("", "a mapping such as {type: float, low: 0.1, high: 1.0}")
        kind = data.get("type")
        if kind not in PARAM_TYPES:
            raise refuse("type", f"{kind!r}: one of " + ", ".join(PARAM_TYPES))
        for key in data:
            if key not in PARAM_KEYS[kind]:
                raise refuse(key, f"unknown key for a {kind} parameter" + closest(key, PARAM_KEYS[kind]))
        data = {**data, "name": info.context["param"]}
        if kind in ("float", "int"):
            data.update({key: _number(data[key], kind, key != "step") for key in ("low", "high", "step")
                         if key in data})
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        if self.type in ("float", "int"):
            self._check_range()
        elif self.type == "categorical":
            self._check_choices()
        elif self.value is None:
            raise refuse("value", "missing or null: a fixed parameter needs a value (to leave a key at its base "
                         "value, do not search it)")
        if self.when is not None:
            self._check_condition()
        return self

    def _check_range(self) -> None:
        for bound in ("low", "high"):
            value = getattr(self, bound)
            if value is None:
                raise refuse(bound, f"missing: a {self.type} parameter needs low and high")
            if self.type == "int" and not isinstance(value, int):
                raise refuse(bound, f"{short(value)}: must be an integer")
        low, high, step = self.low, self.high, self.step
        if low > high:
            raise refuse("", f"inverted range: low = {low} > high = {high}")
        if low == high:
            raise refuse("", f"empty range: low = high = {low} (use type: fixed for a constant)")
        if self.log and low <= 0:
            raise refuse("low", f"{low}: a log-scaled range must be > 0")
        if step is None:
            return
        if step <= 0 or self.log:
            raise refuse("step", f"{short(step)}: a number > 0, and not with log: true")
        if self.type == "int" and not isinstance(step, int):
            raise refuse("step", f"{step!r}: an int parameter needs an integer step")
        steps = (high - low) / step
        if abs(steps - round(steps)) > 1e-9 * max(1.0, abs(steps)):
            raise refuse("step", f"{step!r} does not divide the range [{low}, {high}] (Optuna would silently lower "
                         "the upper bound): choose a step that does")

    def _check_choices(self) -> None:
        choices = self.choices
        if not choices:
            raise refuse("choices", f"{short(choices)}: a non-empty list")
        if len(set(map(repr, choices))) != len(choices):
            raise refuse("choices", f"{short(choices)}: duplicate choices")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise refuse("choices", f"{short(choices)}: plain values (numbers, strings, true/false, null), not lists "
                         "or mappings")

    def _check_condition(self) -> None:
        if not _CONDITION.match(self.when):
            raise refuse("when", f"{short(self.when)}: a condition such as 'hard_negative_ratio < 1' or "
                         "'negatives == hcl'")
        try:
            _, op, value = self.condition()
        except YamlError as err:
            raise refuse("when", f"{short(self.when)}: the value is not plain YAML ({err.reason})") from None
        ordered = op in ("<", "<=", ">", ">=")
        if ordered and not is_number(value):
            raise refuse("when", f"{short(self.when)}: {op} needs a finite number on its right")
        if not ordered and not (value is None or isinstance(value, (bool, str)) or is_number(value)):
            raise refuse("when", f"{short(self.when)}: {op} needs a number, a string, true/false or null")

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
        if name not in field_names():
            raise SpaceError(source, f"search.{name}", "not a training config key" + closest(name, field_names()))
        params.append(validated(Param, spec, source, under(f"search.{name}"), param=name))
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


def _number(value: Any, kind: str, bound: bool) -> Any:
    """A number as its parameter's type holds it: YAML 1.1 reads ``1e-4`` (no dot) as a string, read as the number
    it spells (as training keys are); an int parameter's 2.0 is 2, a float parameter's bound 2 is 2.0."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return float(value) if kind == "float" and bound else value
