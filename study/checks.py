"""Checks of a whole space against the training config and how its trials will run, made with the space file's
other checks (``study/space.py``) before anything starts; each refusal is a ``SpaceError``."""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

from moco.config import ConfigError
from moco.vocabulary import MONITOR_METRICS
from study.params import Param, SpaceError

if TYPE_CHECKING:
    from study.space import Space


def _places(space: Space, field: str) -> list[tuple[str, object]]:
    """Where a training-config ``field`` gets its values in ``space``, each with the key path a refusal names: the
    base (its override, or the base config's value), each variant's override (None where it sets none) and the
    bounds of a search over it."""
    places = [(f"base.overrides.{field}" if field in space.base_overrides else f"base ({space.base_name})",
               getattr(space.base, field))]
    places += [(f"variants.{name}.{field}", overrides.get(field)) for name, overrides in space.variants.items()]
    return places + [(f"search.{field}", value) for p in space.params if p.name == field for value in p.extremes()]


def check_devices(space: Space) -> None:
    """``device: cuda`` needs a GPU per worker: with ``gpus_per_worker: 0`` Ray gives the workers none, and every
    trial would fail inside its worker."""
    if space.settings.gpus_per_worker:
        return
    for key, device in _places(space, "device"):
        if device == "cuda":
            raise SpaceError(space.source, key, "cuda, but gpus_per_worker = 0 gives the trials' workers no GPU: "
                             "set study.gpus_per_worker: 1 (or --gpus-per-worker 1), or device: auto")


def check_monitor(space: Space) -> None:
    """A study's per-epoch metric (``val_knn_top1``, ``val_probe_top1``) comes from the monitor, and Tune needs it
    in every epoch report (it refuses a report without it; its scheduler and searcher read it there): in a study the
    monitor runs every epoch (``knn_every: 1``)."""
    if space.settings.metric not in MONITOR_METRICS:
        return
    for key, every in _places(space, "knn_every"):
        if every not in (None, 1):
            raise SpaceError(space.source, key, f"{every}, but the study's metric {space.settings.metric} comes from "
                             "the per-epoch monitor and Tune needs it in every epoch report: knn_every must be 1 in "
                             "a study")


EPOCHS_FOLLOW = ("trials are budgeted in compute, and their epochs follow from it (compute_budget / views): "
                  "set or search compute_budget instead of epochs")


def check_against_config(space: Space) -> None:
    """Every value a trial can take must be a valid training config (corners of the space, or every variant)."""
    if space.variants:
        for name, overrides in space.variants.items():
            if "epochs" in overrides:
                raise SpaceError(space.source, f"variants.{name}.epochs", EPOCHS_FOLLOW)
            try:
                space.config_with(overrides)
            except ConfigError as err:
                raise SpaceError(space.source, f"variants.{name}.{err.key}",
                                 f"{err.value!r} is not allowed: {err.allowed}") from None
        return
    if any(p.name == "epochs" for p in space.params):
        raise SpaceError(space.source, "search.epochs", EPOCHS_FOLLOW)
    for values in _corners(space.params):
        try:
            space.config_with(values)
        except ConfigError as err:
            key = f"search.{err.key}" if err.key in values else f"search (with {values})"
            raise SpaceError(space.source, key, f"the training config rejects {err.key} = {err.value!r} "
                             f"(reached with {values}): {err.allowed}") from None


def _corners(params: list[Param]):
    """Points that bound the space, honouring ``when``: for every combination of the values of the parameters that
    conditions refer to, the active parameters' corners when there are few, else each one's values with the others
    at their first value."""
    drivers = [p for p in params if any(q.when is not None and q.condition()[0] == p.name for q in params)]
    for fixed in itertools.product(*(d.extremes() for d in drivers)):
        chosen, drawn, active = dict(zip((d.name for d in drivers), fixed)), {}, []
        for p in params:
            if p.active(drawn):
                active.append(p)
                drawn[p.name] = chosen.get(p.name, p.extremes()[0])
        options = [[chosen[p.name]] if p.name in chosen else p.extremes() for p in active]
        combos = itertools.product(*options) if math.prod(len(o) for o in options) <= 4096 else (
            [tuple(o[0] if q is not p else v for q, o in zip(active, options)) for p, opts in zip(active, options)
             for v in opts])
        yield from ({p.name: v for p, v in zip(active, combo)} for combo in combos)
