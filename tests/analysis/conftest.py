"""Synthetic study directories with planted effects, written in the ``study/results.py`` format.

* :func:`make_search_study`: an Optuna-style search whose metric depends strongly on temperature (log scale), weakly
  on the hard-negative ratio and not at all on queue size, threshold or dual-view weight; one planted best trial
  (``trial_id`` ``"planted_best"``); some pruned trials, optionally diverged / errored / running ones.
* :func:`make_grid_study`: a seeded ablation grid; ``dual_view`` adds +2 points with tiny seed noise, ``selective``
  adds nothing (noise only), ``filter`` costs -2, ``all`` adds +2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

SPACE = {
    "temperature": {"type": "float", "low": 0.05, "high": 0.5, "log": True},
    "hard_negative_ratio": {"type": "float", "low": 0.05, "high": 1.0, "log": False},
    "queue_size": {"type": "categorical", "choices": [1024, 4096, 16384]},
    "false_negative_threshold": {"type": "float", "low": 0.5, "high": 1.0, "log": False},
    "dual_view_weight": {"type": "float", "low": 0.0, "high": 1.0, "log": False},
    "epochs": {"type": "fixed", "value": 6},
}
BASE = {"temperature": 0.2, "hard_negative_ratio": 1.0, "queue_size": 4096, "false_negative_threshold": 1.0,
        "dual_view_weight": 1.0}
MAX_EPOCHS = 6


def _meta(name: str, kind: str, space: dict, metric: str = "val_knn_top1", status: str = "finished") -> dict:
    return {
        "name": name, "kind": kind, "metric": metric, "mode": "max",
        # every key present, unused ones null, as study/results.py writes them
        "space": {k: {"low": None, "high": None, "log": False, "choices": None, "value": None, "when": None, **v}
                  for k, v in space.items()},
        "base_config": {"dataset": "fashion_mnist", "epochs": MAX_EPOCHS, **BASE}, "num_samples": 0,
        "searcher": "optuna-tpe" if kind == "search" else "grid", "scheduler": "asha" if kind == "search" else "none",
        "command": "mocostudy ...", "seed": 0, "versions": {"python": "3.x"}, "git_commit": "abc123",
        "started": "2026-01-01T00:00:00", "ended": None if status == "running" else "2026-01-01T01:00:00",
        "status": status,
    }


def _history_rows(trial_id: str, final: float, epochs: int, params: dict, rng: np.random.Generator) -> list[dict]:
    rows = []
    rho, delta = params.get("hard_negative_ratio", 1.0), params.get("false_negative_threshold", 1.0)
    for e in range(1, epochs + 1):
        frac = e / MAX_EPOCHS
        q50 = 0.1 + 0.3 * (1 - rho) * frac
        rows.append({
            "trial_id": trial_id, "epoch": e, "loss": 6.0 - 2 * frac, "lr": 0.06, "momentum": 0.99,
            "images_per_s": 1000.0, "epoch_s": 10.0,
            "val_knn_top1": final - 20 * (1 - frac) ** 2 if e % 2 == 0 or e == epochs else math.nan,
            "pos_sim": 0.8, "neg_sim_q10": q50 - 0.1, "neg_sim_q50": q50, "neg_sim_q90": q50 + 0.15,
            "filtered_frac": max(0.0, 1 - delta), "kept_negatives": 4096 * rho,
            "false_neg_rate": 0.02 + 0.1 * (1 - rho) * delta + rng.normal(0, 0.002),
            "alignment": 0.5, "uniformity": -2.0, "time_total_s": 10.0 * e,
        })
    return rows


def _trial_row(tid: str, number: int, status: str, params: dict, value: float, epochs: int, **extra) -> dict:
    done = status == "completed"
    return {
        "trial_id": tid, "trial_number": number, "is_baseline": number == 0, "status": status,
        **{f"param_{k}": v for k, v in params.items()},
        "variant": extra.pop("variant", None), "seed": extra.pop("seed", 0),
        "val_knn_top1": value, "best_val_knn_top1": value,
        "test_knn_top1": value - 1 if done else None, "linear_top1": None,
        "epochs": epochs, "max_epochs": MAX_EPOCHS, "images_seen": 60000 * epochs * 2, "wall_s": 60.0 * epochs,
        "cpus": 2, "gpus": 0, "cpu_hours": 2 * 60.0 * epochs / 3600, "gpu_hours": 0.0, "node_id": "n0",
        "error": extra.pop("error", None), "extra_column": "tolerated", **extra,
    }


def write_study(path: Path, meta: dict, trials: list[dict], history: list[dict]) -> Path:
    """Write one study directory (``study.json``, ``trials.csv``, ``history.csv``) and return its path."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "study.json").write_text(json.dumps(meta, indent=2))
    pd.DataFrame(trials).to_csv(path / "trials.csv", index=False)
    cols = ["trial_id", "epoch", "loss", "val_knn_top1"]
    (pd.DataFrame(history) if history else pd.DataFrame(columns=cols)).to_csv(path / "history.csv", index=False)
    return path


def planted_metric(params: dict) -> float:
    """70 + strong temperature effect (peak at 0.1, log scale) + weak linear ratio effect; nothing else matters."""
    t = math.log10(params["temperature"] / 0.1)
    return 80.0 - 25.0 * t * t + 5.0 * params["hard_negative_ratio"]


def make_search_study(root: Path, name: str = "search", n: int = 48, seed: int = 0, broken: bool = False,
                      status: str = "finished") -> Path:
    """A search study with planted importance (temperature >> ratio > others = 0) and a planted best trial."""
    rng = np.random.default_rng(seed)
    trials, history = [], []
    for i in range(n):
        if i == 0:
            params = dict(BASE)
        elif i == n // 2:
            params = {"temperature": 0.1, "hard_negative_ratio": 1.0, "queue_size": 1024,
                      "false_negative_threshold": 0.9, "dual_view_weight": 0.5}
        else:
            params = {
                "temperature": float(np.exp(rng.uniform(math.log(0.05), math.log(0.5)))),
                "hard_negative_ratio": float(rng.uniform(0.05, 1.0)),
                "queue_size": int(rng.choice([1024, 4096, 16384])),
                "false_negative_threshold": float(rng.uniform(0.5, 1.0)),
                "dual_view_weight": float(rng.uniform(0.0, 1.0)),
            }
        value = planted_metric(params) + rng.normal(0, 0.05)
        tid = "planted_best" if i == n // 2 else f"t{i:03d}"
        if i == n // 2:
            value += 3.0  # clearly the best
        status_i = "completed"
        if i > 0 and i != n // 2 and i % 5 == 3:
            status_i = "pruned"
        if broken and i in (2, 7):
            status_i = "diverged"
        if broken and i in (4,):
            status_i = "errored"
        if broken and i == n - 1:
            status_i = "running"
        epochs = MAX_EPOCHS if status_i == "completed" else {"pruned": 2, "diverged": 1, "errored": 0,
                                                             "running": 3}[status_i]
        v = value if status_i == "completed" else (value - 15 if status_i in ("pruned", "running") else math.nan)
        trials.append(_trial_row(tid, i, status_i, params, v, epochs,
                                 error="RuntimeError: CUDA OOM" if status_i == "errored" else None))
        if status_i == "diverged":
            history += [{**r, "loss": math.nan} for r in _history_rows(tid, value, epochs, params, rng)]
        elif epochs:
            history += _history_rows(tid, value, epochs, params, rng)
    return write_study(root / name, _meta(name, "search", SPACE, status=status), trials, history)


VARIANTS = {  # variant -> (planted effect, seed noise sd)
    "baseline": (0.0, 0.0), "dual_view": (2.0, 0.1), "selective": (0.0, 1.0), "filter": (-2.0, 0.1),
    "all": (2.0, 0.1),
}


#: Final endpoints a grid run reports with its last epoch (``final=True``): offset from the run's value, and raw pixels.
FINAL = {"final_val_knn_top1": (0.0, 78.0), "final_val_probe_top1": (3.0, 81.0), "test_knn_top1": (-1.0, 77.0),
         "linear_top1": (2.0, 80.0)}


def make_grid_study(root: Path, name: str = "ablation", seeds: int = 3, seed: int = 1,
                    variants: dict | None = None, final: bool = False) -> Path:
    """A seeded ablation grid; each seed has a shared offset (so pairing by seed matters). With ``final``, each run's
    last history row also holds the :data:`FINAL` endpoints (its value plus the offset) and their raw-pixel values."""
    rng = np.random.default_rng(seed)
    variants = variants or VARIANTS
    trials, history, number = [], [], 0
    seed_offset = rng.normal(0, 1.5, size=seeds)
    for v, (effect, sd) in variants.items():
        for s in range(seeds):
            value = 75.0 + seed_offset[s] + effect + (rng.normal(0, sd) if sd else 0.0)
            tid = f"{v}_s{s}"
            row = _trial_row(tid, number, "completed", {}, value, MAX_EPOCHS, variant=v, seed=s)
            row["is_baseline"] = v == "baseline"
            row["images_seen"] *= 2 if v in ("dual_view", "all") else 1
            trials.append(row)
            history += _history_rows(tid, value, MAX_EPOCHS, BASE, rng)
            if final:
                for endpoint, (offset, raw) in FINAL.items():
                    history[-1].update({endpoint: value + offset, f"raw_{endpoint}": raw})
            number += 1
    space = {"variant": {"type": "categorical", "choices": list(variants)}, "seed": {"type": "categorical",
                                                                                     "choices": list(range(seeds))}}
    meta = _meta(name, "grid", space)
    for t in trials:
        t["param_variant"], t["param_seed"] = t["variant"], t["seed"]
    return write_study(root / name, meta, trials, history)


@pytest.fixture
def search_study(tmp_path: Path) -> Path:
    """A finished search study with planted effects."""
    return make_search_study(tmp_path)


@pytest.fixture
def grid_study(tmp_path: Path) -> Path:
    """A finished seeded ablation grid with planted component effects."""
    return make_grid_study(tmp_path)


RUNG_SETTINGS = {"grace_period": 1, "reduction_factor": 2, "time_attr": "compute", "max_t": 8}


def _unit(name: str, value: float) -> float:
    """Position of ``value`` in ``name``'s searched range, on the parameter's own scale (0 = low, 1 = high)."""
    spec = SPACE[name]
    if spec.get("log"):
        return math.log(value / spec["low"]) / math.log(spec["high"] / spec["low"])
    return (value - spec["low"]) / (spec["high"] - spec["low"])


def make_rung_study(root: Path, name: str = "rungs", n: int = 48, seed: int = 0, planted: str = "temperature",
                    raw: bool = True, time_attr: bool = True) -> Path:
    """An ASHA study on compute (rungs 1, 2, 4, then max_t = 8) whose metric, up to compute 4, depends only on the
    ``planted`` parameter (``50 + 20·u + 2·log2(compute)``, u its position in the range, plus 0.05 noise); the trials
    promoted at each rung are chosen at random (half of them; the baseline always continues), and a completed
    trial's final value adds a random gain (sd 8), so the completed trials alone carry no planted signal.
    A one-way trial (λ = 1, the baseline and about a third of the others) adds 1 compute per epoch, a dual-view
    trial 2. With ``raw``, epoch 1 reports ``raw_val_knn_top1`` (about 55)."""
    rng = np.random.default_rng(seed)
    rungs, max_t = [1, 2, 4], 8
    params = [dict(BASE)]
    for _ in range(n - 1):
        p = {"temperature": float(np.exp(rng.uniform(math.log(0.05), math.log(0.5)))),
             "hard_negative_ratio": float(rng.uniform(0.05, 1.0)),
             "queue_size": int(rng.choice([1024, 4096, 16384])),
             "false_negative_threshold": float(rng.uniform(0.5, 1.0)),
             "dual_view_weight": 1.0 if rng.random() < 0.3 else float(rng.uniform(0.0, 0.99))}
        params.append(p)
    budget = np.full(n, max_t, dtype=float)  # the compute each trial ran to
    alive = list(range(n))
    for r in rungs:  # at rung r, a random half continues (the baseline always does)
        others = [i for i in alive if i != 0]
        keep = set(rng.choice(others, size=len(alive) // 2 - 1, replace=False).tolist()) | {0}
        for i in alive:
            if i not in keep:
                budget[i] = r
        alive = sorted(keep)
    trials, history = [], []
    for i, p in enumerate(params):
        tid = f"r{i:03d}"
        per_epoch = 1 if p["dual_view_weight"] == 1.0 else 2
        u = _unit(planted, p[planted])
        gain = rng.normal(0, 8)
        epochs = int(math.ceil(budget[i] / per_epoch))
        value = math.nan
        for e in range(1, epochs + 1):
            c = e * per_epoch
            value = 50 + 20 * u + 2 * math.log2(min(c, 4)) + rng.normal(0, 0.05) + (gain if c >= max_t else 0.0)
            row = {"trial_id": tid, "epoch": e, "compute": float(c), "val_knn_top1": value, "loss": 6.0 - 0.2 * e}
            if raw and e == 1:
                row["raw_val_knn_top1"] = 55.0 + 0.01 * i
            history.append(row)
        status = "completed" if budget[i] >= max_t else "pruned"
        trials.append(_trial_row(tid, i, status, p, value, epochs))
    meta = _meta(name, "search", SPACE)
    meta["settings"] = {**RUNG_SETTINGS, "scheduler": "asha"}
    if not time_attr:
        del meta["settings"]["time_attr"]
    return write_study(root / name, meta, trials, history)
