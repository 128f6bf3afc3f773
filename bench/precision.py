"""Benchmark: does bf16 cost quality? The default config trained in fp32 and in bf16, paired by seed.

For each seed, two runs of ``configs/fashion_mnist.yaml`` that differ only in ``precision`` (fp32, then bf16;
``memory_format: contiguous`` in both), trained with ``moco.engine.Engine`` on the CPU without Ray
(``bench.longrun.train_run``: no per-epoch monitor; after training, full-set weighted kNN on validation and test
with all 55k labeled training images as the bank, and a linear probe on the same frozen fp32 features). The result
file is rewritten after every run, so an interrupted benchmark keeps its finished pairs.

Reported per metric (test kNN, linear probe, validation kNN): the per-seed values, the paired difference
d_s = bf16_s - fp32_s with its mean and 95 % t interval, and the seeds' spread (the fp32 runs' range and standard
deviation). bf16 "costs accuracy beyond the seeds' spread" when the interval of the mean difference lies wholly
below zero *and* the mean difference exceeds the fp32 seeds' standard deviation in size.

``python -m bench.precision [--seeds 1,2,3] [--epochs 10] [--train-subset N] [--output FILE]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import RESULTS_DIR, ROOT, environment, loadavg, now, write_json

CONFIG = ROOT / "configs" / "fashion_mnist.yaml"
PRECISIONS = ("fp32", "bf16")
METRICS = ("test_knn", "linear_probe", "val_knn")


def paired_summary(runs: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per metric: bf16 - fp32 differences over the seeds that finished both, their mean and 95 % t interval, the
    fp32 seeds' standard deviation and range, and whether bf16 costs accuracy beyond that spread."""
    from analysis.ablation import t_interval

    seeds = sorted(s for s, pair in runs.items() if all(p in pair for p in PRECISIONS))
    out: dict[str, Any] = {"seeds_paired": seeds}
    for metric in METRICS:
        fp32 = [runs[s]["fp32"][metric] for s in seeds]
        bf16 = [runs[s]["bf16"][metric] for s in seeds]
        diffs = [b - f for b, f in zip(bf16, fp32)]
        low, high = t_interval(diffs) if len(diffs) >= 2 else (math.nan, math.nan)
        mean = statistics.fmean(diffs) if diffs else math.nan
        sd = statistics.stdev(fp32) if len(fp32) >= 2 else math.nan
        out[metric] = {"fp32": fp32, "bf16": bf16, "diffs": diffs, "mean_diff": mean, "ci95": [low, high],
                       "fp32_sd": sd, "fp32_range": [min(fp32), max(fp32)] if fp32 else None,
                       "costs_accuracy": bool(high < 0 and abs(mean) > sd) if len(diffs) >= 2 else None}
    return out


def run(seeds: list[int], overrides: dict[str, Any], save: Callable[[dict[str, Any]], None] | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train every (seed, precision) pair in turn; ``save(partial_result)`` after each finished run."""
    from bench.longrun import train_run
    from moco.config import TrainConfig

    out: dict[str, Any] = {"config": str(CONFIG.relative_to(ROOT)), "overrides": overrides, "seeds": seeds,
                           "torch_threads": torch.get_num_threads(), "runs": {}}
    for seed in seeds:
        for precision in PRECISIONS:
            cfg = TrainConfig.from_yaml(CONFIG, {**overrides, "seed": seed, "precision": precision,
                                                 "memory_format": "contiguous", "linear_probe": True})
            log(f"[precision] seed {seed} {precision}: {cfg.epochs} epochs (load {loadavg()})")
            row = train_run(cfg, log=log)
            out["runs"].setdefault(str(seed), {})[precision] = row
            out["summary"] = paired_summary(out["runs"])
            log(f"[precision] seed {seed} {precision}: test kNN {row['test_knn']:.2f} linear {row['linear_probe']:.2f} "
                f"train {row['train_s']:.0f} s")
            if save:
                save(dict(out, partial=True))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10, the config's)")
    parser.add_argument("--train-subset", type=int, default=None, help="train on this many images (default all)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "precision.json")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"epochs": args.epochs}
    if args.train_subset:
        overrides["train_subset"] = args.train_subset
    command = "python -m bench.precision " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = {"name": "precision", "command": command, "date": now(), "mode": "full", **environment(),
           "load_before": loadavg()}

    def save(result: dict[str, Any]) -> None:
        write_json(args.output, {**doc, "load_after": loadavg(), "result": result})

    save(run([int(s) for s in args.seeds.split(",")], overrides, save))
    return 0


if __name__ == "__main__":
    sys.exit(main())
