"""Checks of a whole space against how its trials will run, made with the space file's other checks
(``study/space.py``'s ``check_study``) before anything starts; each refusal is a ``SpaceError``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from study.space import Space


def check_devices(space: Space) -> None:
    """``device: cuda`` needs a GPU per worker: with ``gpus_per_worker: 0`` Ray gives the workers none, and every
    trial would fail inside its worker."""
    from study.space import SpaceError

    if space.settings.gpus_per_worker:
        return
    places = [("base.overrides.device" if "device" in space.base_overrides else f"base ({space.base_name})",
               space.base.device)]
    places += [(f"variants.{name}.device", overrides.get("device")) for name, overrides in space.variants.items()]
    places += [("search.device", value) for p in space.params if p.name == "device" for value in p.extremes()]
    for key, device in places:
        if device == "cuda":
            raise SpaceError(space.source, key, "cuda, but gpus_per_worker = 0 gives the trials' workers no GPU: "
                             "set study.gpus_per_worker: 1 (or --gpus-per-worker 1), or device: auto")
