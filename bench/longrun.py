"""Benchmark: the default Fashion-MNIST config trained for 10 and for 50 epochs, beside raw pixels.

Each length is its own run with its own learning-rate schedule (``configs/fashion_mnist.yaml`` with ``epochs``
overridden), trained with ``moco.engine.Engine`` directly on the CPU (no Ray), seed 0. After training: weighted kNN
top-1 (k = 200, t = 0.1, cosine) on the full validation (5k) and test (10k) sets with all 55k training images as
the bank (``Engine.final_evaluation``), and a linear probe on the same frozen features. Raw pixels use the same
protocol and bank, uncentred and centred on the bank's mean. Every epoch prints a progress line; the result file
is rewritten after each finished run, so a long run that is interrupted keeps the runs already done.

Quick mode: 1 and 2 epochs on a 4096-image subset and 5-epoch probes (a smoke test of the path, not a quality figure).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import ROOT, Context, loadavg
from bench.page import Goal, num

CONFIG = ROOT / "configs" / "fashion_mnist.yaml"
PROBE_EPOCHS = 20
TITLE = "8. Quality over long training (default config)"


def raw_pixel_baselines(cfg, probe_epochs: int) -> dict[str, dict[str, float]]:
    """Raw pixels with the protocol of ``Engine.final_evaluation`` (bank: every labeled training image), probe too."""
    from bench.quality import raw_pixel_row
    from moco.data import load_dataset

    data = load_dataset(cfg)
    return {f"raw pixels, {'centred' if centred else 'uncentred'}": raw_pixel_row(data.labeled_train, data, cfg,
                                                                               centred, probe_epochs)
            for centred in (False, True)}


def train_run(cfg, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``cfg`` for ``cfg.epochs`` epochs, then evaluate on the full sets (kNN, and the probe when configured)."""
    from moco.data import load_dataset
    from moco.engine import Engine

    engine = Engine(cfg, load_dataset(cfg), torch.device("cpu"))
    start = time.perf_counter()
    history = []
    for _ in range(cfg.epochs):
        row = engine.train_epoch()
        history.append({k: row[k] for k in ("epoch", "loss", "images_per_s", "epoch_s", "data_share") if k in row})
        log(f"[longrun] {cfg.epochs}-epoch run: epoch {row.get('epoch')} loss {row['loss']:.4f} "
            f"{row['images_per_s']:.0f} img/s ({time.perf_counter() - start:.0f} s, load {loadavg()})")
    train_s = time.perf_counter() - start
    final = engine.final_evaluation()
    return {"epochs": cfg.epochs, "val_knn": final["final_val_knn_top1"], "test_knn": final["test_knn_top1"],
            "linear_probe": final["linear_top1"], "train_s": train_s, "eval_s": time.perf_counter() - start - train_s,
            "history": history, "load_after": loadavg()}


def run(ctx: Context) -> dict[str, Any]:
    """Both runs and the raw-pixel rows; ``ctx.save(partial_result)`` is called after each step that finished."""
    from moco.config import TrainConfig

    quick, save = ctx.quick, ctx.save
    lengths = (1, 2) if quick else (10, 50)
    overrides = {"train_subset": 4096} if quick else {}
    probe_epochs = 5 if quick else PROBE_EPOCHS
    base = TrainConfig.from_yaml(CONFIG, overrides)
    out: dict[str, Any] = {"config": str(CONFIG.relative_to(ROOT)), "overrides": overrides, "seed": base.seed,
                           "torch_threads": torch.get_num_threads(), "probe_epochs": probe_epochs,
                           "raw_pixels": raw_pixel_baselines(base, probe_epochs), "runs": {}}
    for epochs in lengths:
        if save:
            save(dict(out, partial=True))
        out["runs"][f"{epochs} epochs"] = train_run(base.replace(epochs=epochs, linear_probe=True,
                                                                 probe_epochs=probe_epochs))
    best_raw = max(row["test_knn"] for row in out["raw_pixels"].values())
    out["beats_raw_pixels"] = {name: bool(row["test_knn"] > best_raw) for name, row in out["runs"].items()}
    return out


# --- the page -----------------------------------------------------------------------------------------------------
def render(r: dict, figs: Path) -> list[str]:
    raw = r["raw_pixels"]
    out = [f"{r['config']} (overrides {r['overrides'] or 'none'}, seed {r['seed']}, {r['torch_threads']} torch "
           f"threads), each length its own run and schedule; weighted kNN (k = 200, t = 0.1) on the full "
           "validation and test sets with every labeled training image as the bank, and a linear probe "
           f"({r['probe_epochs']} epochs) on the same frozen features. Raw pixels use the same protocol."
           + (" **Partial result: the run was interrupted or is still running.**" if r.get("partial") else ""), "",
           "| features | val kNN | test kNN | linear probe (test) | training time |", "|---|---|---|---|---|"]
    for name, row in r["runs"].items():
        out.append(f"| MoCo v2, {name} | {num(row['val_knn'])} | {num(row['test_knn'])} | {num(row['linear_probe'])} "
                   f"| {row['train_s'] / 60:.1f} min |")
    for name, row in raw.items():
        out.append(f"| {name} | {num(row['val_knn'])} | {num(row['test_knn'])} | {num(row['linear_probe'])} | - |")
    out.append("")
    return out


def goals(r: dict) -> list[Goal]:
    best_raw = max(row["test_knn"] for row in r["raw_pixels"].values())
    return [(f"learned features beat raw pixels (test kNN, {name})", f"{num(row['test_knn'])} vs {num(best_raw)}",
             row["test_knn"] > best_raw) for name, row in r["runs"].items()]
