"""Checkpoints of one training run: what an :class:`moco.engine.Engine` saves and restores, and the checksummed
folder it is written to (moco/train.py attaches that folder to Ray Train's reports).

The state holds the model (with its queue), the optimiser, the epoch, the images seen, the config, the latest epoch's
report and torch's RNG state.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from moco.engine import Engine

STATE_FILE = "state.pt"
CHECKSUM_FILE = "state.sha256"


def engine_state(engine: Engine) -> dict[str, Any]:
    """Everything :func:`restore` needs to continue ``engine``'s run after its last completed epoch."""
    return {"model": engine.model.state_dict(), "optimizer": engine.optimizer.state_dict(), "epoch": engine.epoch,
            "images_seen": engine.images_seen, "config": engine.cfg.to_dict(),
            "last_metrics": engine.last_metrics,
            "torch_rng": torch.get_rng_state()}


def restore(engine: Engine, state: dict[str, Any]) -> None:
    """Put ``engine`` where :func:`engine_state` left the run it was taken from."""
    engine.model.load_state_dict(state["model"])
    engine.optimizer.load_state_dict(state["optimizer"])
    engine.epoch = int(state["epoch"])
    engine.images_seen = int(state["images_seen"])
    engine.last_metrics = dict(state.get("last_metrics", {}))
    torch.set_rng_state(state["torch_rng"])


def write_checkpoint_dir(state: dict[str, Any], directory: str | Path) -> None:
    """Write ``state`` and its SHA-256 into ``directory`` (the file is renamed into place only once complete)."""
    directory = Path(directory)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    tmp = directory / (STATE_FILE + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, directory / STATE_FILE)
    (directory / CHECKSUM_FILE).write_text(hashlib.sha256(data).hexdigest())


def read_checkpoint_dir(directory: str | Path) -> dict[str, Any]:
    """Load a checkpoint directory, verifying its checksum; raise ``ValueError`` when it is corrupt or partial."""
    directory = Path(directory)
    state_path, sum_path = directory / STATE_FILE, directory / CHECKSUM_FILE
    if not state_path.is_file() or not sum_path.is_file():
        raise ValueError(f"checkpoint {directory} is incomplete (missing {STATE_FILE} or {CHECKSUM_FILE})")
    data = state_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sum_path.read_text().strip():
        raise ValueError(f"checkpoint {directory} is corrupt (checksum mismatch)")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
