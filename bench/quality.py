"""Benchmark: representation quality on Fashion-MNIST, and throughput of the default training config.

1. At equal compute (the default study's base, ``configs/hardneg.yaml``, with its ``compute_budget``: a dual-view
   configuration trains half the epochs of the one-way baseline; scaled down in quick mode), trained with
   ``moco.engine.Engine`` directly (no Ray), with seeds the search did not use (it trains with seed 0): the MoCo v2
   baseline (lambda = rho = delta = 1) and the best configuration of the default study other than the baseline (from
   ``runs/hardneg/trials.csv`` when it exists, else the best trial of this run's TPE study from bench/efficiency.py;
   only its searched keys are taken; the baseline itself is skipped because comparing it with itself says nothing).
   Validation and test weighted kNN top-1 (k = 200, t = 0.1, cosine) with the run's training images as the bank, and
   the linear-probe test accuracy (``moco.evaluate.linear_probe``) on the same frozen features; beside raw pixels
   with the same protocol (uncentred, and centred on the bank's mean), with the run's bank and with the full 55k
   training split as the bank.
2. Throughput of the default Fashion-MNIST config (``configs/fashion_mnist.yaml``): training images/s and the share of
   an epoch spent in data and augmentation (``data_share``; goal < 15 %).
(The default config after 10 and 50 epochs is ``bench/longrun.py``.)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import ROOT, Context, stats
from bench.page import Goal, goal_sentence, num, pct, spread
from moco.vocabulary import BASELINE_POINT, VAL_KNN

GOAL_DATA_SHARE = 0.15  #: data and augmentation, as a share of an epoch of the default config
TITLE = "6. Quality and training throughput"


def _study_base(quick: bool):
    from study.space import load_space

    base = load_space(str(ROOT / "configs" / "hardneg.yaml")).base.replace(raw_reference=False)  # raw: below
    if quick:
        base = base.replace(compute_budget=2, train_subset=4096, knn_bank_size=4096)
    return base


def best_params(context: dict[str, Any]) -> tuple[dict[str, Any], str]:
    import yaml

    default = ROOT / "runs" / "hardneg" / "best_config.yaml"
    candidates = [(default, "runs/hardneg/best_config.yaml (the default study)")]
    eff = (context or {}).get("efficiency")
    if eff and eff.get("studies", {}).get("tpe_asha"):
        run_dir = Path(eff["studies"]["tpe_asha"][0]["run_dir"])
        candidates.append((run_dir / "best_config.yaml",
                           f"best trial of this run's TPE study ({'quick' if eff.get('quick') else 'full'} mode)"))
    from study.space import load_space

    kinds = {p.name: p.type for p in load_space(str(ROOT / "configs" / "hardneg.yaml")).params}
    searched = list(kinds)
    for path, label in candidates:
        trials = path.parent / "trials.csv"
        if trials.is_file():  # the best trial other than the baseline: comparing the baseline with itself says nothing
            import pandas as pd

            from study.results import best_trial

            table = pd.read_csv(trials)
            others = table[~table["is_baseline"].astype(str).str.lower().eq("true")]
            best = best_trial(others, VAL_KNN)
            if best is not None:
                values = {k: best[f"param_{k}"] for k in searched
                          if f"param_{k}" in best.index and pd.notna(best[f"param_{k}"])}
                return ({k: int(v) if kinds[k] == "int" else v.item() if hasattr(v, "item") else v
                         for k, v in values.items()},
                        f"{label}: its best trial other than the MoCo v2 baseline ({best['trial_id']}, "
                        f"{VAL_KNN} {float(best[VAL_KNN]):.2f})")
        if path.is_file():
            values = yaml.safe_load(path.read_text()) or {}
            return {k: values[k] for k in searched if k in values}, label
    return {}, "no study result found: the best configuration equals the baseline"


def _raw(images: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
    x = images.reshape(len(images), -1).float() / 255.0
    if mean is not None:
        x = x - mean
    return F.normalize(x, dim=1)


def raw_pixel_row(bank, dataset, cfg, centred: bool, probe_epochs: int | None = None) -> dict[str, float]:
    """Validation and test kNN of raw pixels (normalised, optionally centred on ``bank``'s mean) against ``bank``;
    with ``probe_epochs``, also the test accuracy of a linear probe trained on ``bank``."""
    from moco.evaluate import knn_accuracy, linear_probe

    mean = (bank.images.reshape(len(bank.images), -1).float() / 255.0).mean(0) if centred else None
    feats = _raw(bank.images, mean)
    row = {f"{name}_knn": knn_accuracy(feats, bank.labels, _raw(split.images, mean), split.labels,
                                      dataset.num_classes, k=cfg.knn_k, t=cfg.knn_t)
           for name, split in (("val", dataset.val), ("test", dataset.test))}
    if probe_epochs:
        row["linear_probe"] = linear_probe(feats, bank.labels, _raw(dataset.test.images, mean), dataset.test.labels,
                                           dataset.num_classes, epochs=probe_epochs)
    return row


def raw_pixels(dataset, full_train, cfg, probe_epochs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for bank_name, bank in {"run bank": dataset.train, "full 55k bank": full_train}.items():
        for centred in (False, True):
            probe = probe_epochs if bank_name == "run bank" and centred else None
            out[f"raw pixels, {'centred' if centred else 'uncentred'}, {bank_name}"] = raw_pixel_row(
                bank, dataset, cfg, centred, probe)
    return out


def train_and_evaluate(cfg, dataset, full_train, probe_epochs: int) -> dict[str, Any]:
    from moco.engine import Engine
    from moco.evaluate import embed, knn_accuracy, linear_probe

    engine = Engine(cfg, dataset, torch.device("cpu"))
    start = time.perf_counter()
    epochs = []
    for _ in range(cfg.epochs):
        epochs.append(engine.train_epoch())
    train_s = time.perf_counter() - start
    final = engine.final_evaluation()
    def features(split):  # (features, labels), as the engine's final evaluation computes them
        return embed(engine.model, dataset, split, engine.device)

    bank = features(dataset.labeled_train)  # the bank of final_evaluation
    probe = linear_probe(bank[0], bank[1], *features(dataset.test), dataset.num_classes, epochs=probe_epochs)
    full_bank = features(full_train)
    full = {name: knn_accuracy(full_bank[0], full_bank[1], *features(split), dataset.num_classes, k=cfg.knn_k,
                               t=cfg.knn_t)
            for name, split in (("val", dataset.val), ("test", dataset.test))}
    return {"val_knn": final.get("final_val_knn_top1"), "test_knn": final.get("test_knn_top1"),
            "linear_probe": probe, "val_knn_full_bank": full["val"], "test_knn_full_bank": full["test"],
            "train_s": train_s, "eval_s": time.perf_counter() - start - train_s,
            "images_per_s": stats(e["images_per_s"] for e in epochs[1:] or epochs),
            "data_share": stats(e["data_share"] for e in epochs[1:] or epochs),
            "last_loss": epochs[-1]["loss"]}


def throughput(quick: bool) -> dict[str, Any]:
    """images/s and data share of configs/fashion_mnist.yaml (quick: 5120 images, 2 epochs; full: 3 full epochs)."""
    from moco.config import TrainConfig
    from moco.data import load_dataset
    from moco.engine import Engine

    overrides = {"epochs": 2, "train_subset": 5120} if quick else {"epochs": 3}
    cfg = TrainConfig.from_yaml(ROOT / "configs" / "fashion_mnist.yaml", overrides)
    engine = Engine(cfg, load_dataset(cfg), torch.device("cpu"))
    rows = [engine.train_epoch() for _ in range(cfg.epochs)]
    measured = rows[1:]  # the first epoch is warm-up
    share = stats(r["data_share"] for r in measured)
    return {"config": "configs/fashion_mnist.yaml", "overrides": overrides, "torch_threads": torch.get_num_threads(),
            "repetition": "one epoch after the first", "images_per_s": stats(r["images_per_s"] for r in measured),
            "data_share": share, "epoch_s": stats(r["epoch_s"] for r in measured),
            "goal": f"data share < {GOAL_DATA_SHARE:.0%}", "goal_met": bool(share["median"] < GOAL_DATA_SHARE)}


def run(ctx: Context) -> dict[str, Any]:
    from moco.data import load_dataset

    quick = ctx.quick
    base = _study_base(quick)
    params, source = best_params(ctx.results)
    baseline_cfg = base.replace(**BASELINE_POINT)
    best_cfg = base.replace(**params) if params else baseline_cfg
    dataset = load_dataset(base)
    full_train = load_dataset(base.replace(train_subset=None)).train  # same seeded validation split, all 55k
    probe_epochs = 5 if quick else 20
    seeds = [1] if quick else [1, 2, 3]  # never the search's seed 0
    runs: dict[str, list[dict[str, Any]]] = {"MoCo v2 baseline": [], "best of the study": []}
    for seed in seeds:  # alternate so load drift hits both alike
        runs["MoCo v2 baseline"].append(train_and_evaluate(baseline_cfg.replace(seed=seed), dataset, full_train,
                                                           probe_epochs))
        runs["best of the study"].append(train_and_evaluate(best_cfg.replace(seed=seed), dataset, full_train,
                                                            probe_epochs))
    keys = ("val_knn", "test_knn", "linear_probe", "val_knn_full_bank", "test_knn_full_bank", "train_s")
    models = {name: {k: stats(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    raw = raw_pixels(dataset, full_train, base, probe_epochs)
    same = all(getattr(best_cfg, k) == getattr(baseline_cfg, k) for k in params)
    keys = ("compute_budget", "train_subset", "width", "batch_size", "knn_k", "knn_t")
    out = {"best_is_baseline": same, "base": {k: getattr(base, k) for k in keys},
           "epochs": {"MoCo v2 baseline": baseline_cfg.epochs, "best of the study": best_cfg.epochs},
           "compute": {"MoCo v2 baseline": baseline_cfg.compute, "best of the study": best_cfg.compute},
           "best_params": params, "best_source": source, "seeds": seeds, "probe_epochs": probe_epochs,
           "models": models, "runs": runs, "raw_pixels": raw, "throughput": throughput(quick)}
    return out


def figure(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, val, test = [], [], []
    for name, row in result["raw_pixels"].items():
        if "run bank" in name:
            labels.append(name.replace(", run bank", ""))
            val.append(row["val_knn"])
            test.append(row["test_knn"])
    for name, row in result["models"].items():
        labels.append(name)
        val.append(row["val_knn"]["median"])
        test.append(row["test_knn"]["median"])
    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], val, 0.4, label="validation kNN")
    ax.bar([i + 0.2 for i in x], test, 0.4, label="test kNN")
    for i, (v, t) in enumerate(zip(val, test)):
        ax.text(i - 0.2, v + 0.5, f"{v:.1f}", ha="center", fontsize=7)
        ax.text(i + 0.2, t + 0.5, f"{t:.1f}", ha="center", fontsize=7)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("weighted kNN top-1 (%)")
    lo = min(val + test)
    ax.set_ylim(max(0, lo - 10), 100)
    ax.set_title("Fashion-MNIST kNN at equal compute" + (" (quick mode)" if result.get("quick") else ""))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- the page -----------------------------------------------------------------------------------------------------
def render(r: dict, figs: Path) -> list[str]:
    fig = figure(r, figs / "quality.png")
    b = r["base"]
    if "compute_budget" in b:  # compute budgets (a dual-view configuration trains half the epochs)
        budget = (f"compute budget {b['compute_budget']} (epochs: "
                  + ", ".join(f"{name} {e}" for name, e in r["epochs"].items()) + ")")
    else:  # results saved before compute budgets: equal epochs, which is not equal compute for a dual-view best
        budget = f"{b['epochs']} epochs each (equal epochs, not equal compute for a dual-view configuration)"
    out = [f"Engine runs without Ray, {budget} on {b['train_subset']} training images "
           f"(width {b['width']}, batch {b['batch_size']}), seeds {r['seeds']}; best configuration from "
           f"{r['best_source']}: `{r['best_params']}`. kNN: weighted, k = {b['knn_k']}, t = {b['knn_t']}, cosine; "
           f"linear probe: {r['probe_epochs']} epochs on frozen features, test accuracy (%).", "",
           "| representation | val kNN (run's bank) | test kNN (run's bank) | val kNN (55k bank) | test kNN (55k bank) "
           "| linear probe (test) | training s |", "|---|---|---|---|---|---|---|"]
    for name, m in r["models"].items():
        out.append(f"| {name} | {spread(m['val_knn'])} | {spread(m['test_knn'])} | {spread(m['val_knn_full_bank'])} | "
                   f"{spread(m['test_knn_full_bank'])} | {spread(m['linear_probe'])} | {spread(m['train_s'], 0)} |")
    raw = r["raw_pixels"]
    for centred in ("uncentred", "centred"):
        run_b = raw.get(f"raw pixels, {centred}, run bank", {})
        full_b = raw.get(f"raw pixels, {centred}, full 55k bank", {})
        out.append(f"| raw pixels, {centred} | {num(run_b.get('val_knn'))} | {num(run_b.get('test_knn'))} | "
                   f"{num(full_b.get('val_knn'))} | {num(full_b.get('test_knn'))} | {num(run_b.get('linear_probe'))} "
                   "| - |")
    if r.get("best_is_baseline"):
        out += ["", "**The best configuration found is the MoCo v2 baseline itself**, so both rows train the same "
                "configuration (differences are run-to-run timing only)."]
    out += ["", "Raw pixels are deterministic (one evaluation); the linear probe on raw pixels uses centred, "
            "normalised pixels.", "", f"![quality](figures/{fig.name})", ""]
    t = r["throughput"]
    out += [f"Training throughput of {t['config']} (overrides {t['overrides']}, {t['torch_threads']} torch threads, "
            f"repetition = {t['repetition']}):", "", "| quantity | min / **median** / max |", "|---|---|",
            f"| images/s | {spread(t['images_per_s'], 0)} |", f"| epoch s | {spread(t['epoch_s'], 1)} |",
            f"| data + augmentation share of an epoch | {spread(t['data_share'], 3)} |", "",
            goal_sentence(t["goal_met"], f"data share < {pct(GOAL_DATA_SHARE, 0)}"), ""]
    return out


def goals(r: dict) -> list[Goal]:
    t = r["throughput"]
    return [(f"data + augmentation < {pct(GOAL_DATA_SHARE, 0)} of an epoch (default config)",
             pct(t["data_share"]["median"]), t["goal_met"])]
