"""Benchmark: does bf16 cost quality? The default config trained in fp32 and in bf16, paired by seed.

For each seed, two runs of ``configs/fashion_mnist.yaml`` that differ only in ``precision`` (fp32, then bf16; the
same ``memory_format`` in both: contiguous by default, ``--memory-format auto`` for what ``auto`` picks), trained
with ``moco.engine.Engine`` on the CPU without Ray (``bench.longrun.train_run``: no per-epoch monitor; after
training, full-set weighted kNN on validation and test with all 55k labeled training images as the bank, and a
linear probe on the same frozen fp32 features). The result file is rewritten after every run, so an interrupted
benchmark keeps its finished pairs.

Reported per metric (test kNN, linear probe, validation kNN): the per-seed values, the paired difference
d_s = bf16_s - fp32_s with its mean and 95 % t interval, and the seeds' spread (the fp32 runs' range and standard
deviation). bf16 "costs accuracy beyond the seeds' spread" when the interval of the mean difference lies wholly
below zero *and* the mean difference exceeds the fp32 seeds' standard deviation in size.

``python -m bench.precision [--seeds 1,2,3] [--epochs 10] [--train-subset N] [--memory-format M] [--output FILE]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import RESULTS_DIR, ROOT, Context, keep_other_cpu, loadavg, malloc_note, run_record, write_json
from bench.page import Goal, cpu_line

CONFIG = ROOT / "configs" / "fashion_mnist.yaml"
PRECISIONS = ("fp32", "bf16")
METRICS = ("test_knn", "linear_probe", "val_knn")
TITLE = "9. bf16 vs fp32: quality parity (default config)"
PLAIN_BN = "(bn_mode none)"  #: suffix of bench/step.py part 4's bare-step rows with plain BatchNorm


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


def run(ctx: Context) -> dict[str, Any]:
    """The paired runs of ``bench/run.py``: seeds 1-3 of the default config (quick: 2 seeds, 1 epoch, 2048 images)."""
    return train_pairs([1, 2] if ctx.quick else [1, 2, 3], {"epochs": 1, "train_subset": 2048} if ctx.quick else {},
                       save=ctx.save)


def train_pairs(seeds: list[int], overrides: dict[str, Any], save: Callable[[dict[str, Any]], None] | None = None,
                log: Callable[[str], None] = print, memory_format: str = "contiguous") -> dict[str, Any]:
    """Train every (seed, precision) pair in turn, both in ``memory_format``; ``save(partial_result)`` after each
    finished run."""
    from bench.longrun import train_run
    from moco.allocator import retain_freed_memory
    from moco.config import TrainConfig
    from moco.precision import resolve_memory_format

    out: dict[str, Any] = {"config": str(CONFIG.relative_to(ROOT)), "overrides": overrides, "seeds": seeds,
                           "torch_threads": torch.get_num_threads(),
                           "memory_format": resolve_memory_format(memory_format, torch.device("cpu")),
                           "malloc_retains_freed_memory": retain_freed_memory(), "runs": {}}
    for seed in seeds:
        for precision in PRECISIONS:
            cfg = TrainConfig.from_yaml(CONFIG, {**overrides, "seed": seed, "precision": precision,
                                                 "memory_format": memory_format, "linear_probe": True})
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
    parser.add_argument("--memory-format", default="contiguous", choices=("contiguous", "channels_last", "auto"),
                        help="memory format of both runs of a pair (default contiguous; auto: what auto picks here)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "precision.json")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"epochs": args.epochs}
    if args.train_subset:
        overrides["train_subset"] = args.train_subset
    doc = run_record("precision", False,
                     "python -m bench.precision " + " ".join(argv if argv is not None else sys.argv[1:]))
    keep_other_cpu(args.output)

    def save(result: dict[str, Any]) -> None:
        write_json(args.output, {**doc, "load_after": loadavg(), "result": result})

    save(train_pairs([int(s) for s in args.seeds.split(",")], overrides, save, memory_format=args.memory_format))
    return 0



# --- the page (called by bench/run.py) --------------------------------------------------------------------------------
def render(r: dict[str, Any], figs: Path) -> list[str]:
    return render_parity(r)


def goals(r: dict[str, Any]) -> list[Goal]:
    return parity_goal(r)


def _num(value: Any, digits: int = 2) -> str:
    return "n/a" if value is None or value != value else f"{value:,.{digits}f}"


def _flags(machine: dict[str, Any]) -> str:
    return cpu_line(machine) + malloc_note(machine)


def render_step_part(p: dict[str, Any]) -> list[str]:
    """bench/step.py part 4 (bare step and Engine epoch by precision and memory format) as page lines."""
    m = p.get("machine", {})
    e = p["epoch"]
    out = [f"**Precision and memory format**{' (quick mode)' if p.get('quick') else ''} (default config: ConvNet "
           f"width 32, B = {p['batch']}, 28x28; "
           f"`{p.get('command')}`, {p.get('date')}, {_flags(m)}, {m.get('torch_threads')} torch threads, load "
           f"{[round(x, 1) for x in m.get('load_average_at_start') or []]}"
           + (f"; the benchmark had {100 * p['cpu_share']:.0f} % of its threads' CPU time" if p.get("cpu_share")
              else "") + "). Bare MoCo step (query forward and "
           "backward, key forward, SGD, momentum update) on random inputs, variants alternating; seconds per step:",
           "", "| variant | min | median | max | n | images/s (median) | vs fp32 |", "|---|---|---|---|---|---|---|"]
    for name, t in p["bare_step"].items():
        out.append(f"| {name} | {t['min_s']:.3f} | {t['median_s']:.3f} | {t['max_s']:.3f} | {t['n']} | "
                   f"{t['images_per_s']:,.0f} | {t['speedup_over_fp32']:.2f}x |")
    auto = e.get("auto_resolved", {})
    bare = p["bare_step"]
    cl_gain = bare["channels_last+bf16"]["speedup_over_fp32"] / bare["bf16"]["speedup_over_fp32"]
    why = (f"Why `auto` is {auto.get('precision')} and {auto.get('memory_format')} on the {m.get('cpu')}: bf16 "
           f"autocast made the bare step {bare['bf16']['speedup_over_fp32']:.2f}x as fast as fp32; channels-last on "
           f"top of bf16 {cl_gain:.2f}x{' (no gain)' if cl_gain <= 1.02 else ''}, and channels-last alone "
           f"{bare['channels_last']['speedup_over_fp32']:.2f}x. moco/precision.py turns channels-last on for every CPU "
           "with native bf16 (AVX512-BF16 or AMX-BF16; until 2026-12-03 for AMX only), where it was measured faster "
           "on a Xeon with AMX and on an AMD EPYC Zen 4; a result measured before that date may show `auto` "
           "contiguous on a CPU without AMX.")
    plain = {name.removesuffix(" " + PLAIN_BN): t for name, t in bare.items() if name.endswith(PLAIN_BN)}
    if plain:
        why += (" With plain BatchNorm (`bn_mode: none`) in place of the default split BatchNorm, channels-last + bf16 "
                f"is {plain['channels_last+bf16']['speedup_over_fp32']:.2f}x the default fp32 step and bf16 alone "
                f"{plain['bf16']['speedup_over_fp32']:.2f}x.")
    out += ["", f"Whole epochs through `moco.engine.Engine` ({e['steps_per_epoch']} steps, augmentation included; "
            f"{e['repeats']} epochs each after a warm-up epoch, alternating): "
            f"fp32 {_num(e['fp32']['images_per_s'], 0)} "
            f"images/s, auto ({auto.get('precision')}, {auto.get('memory_format')}) "
            f"{_num(e['auto']['images_per_s'], 0)} images/s: **{e['speedup_auto_over_fp32']:.2f}x** (medians; every "
            f"epoch: fp32 {', '.join(_num(x, 0) for x in e['fp32'].get('all', []))}; auto "
            f"{', '.join(_num(x, 0) for x in e['auto'].get('all', []))})." + _pair_ratios(e), "", why, ""]
    return out


def _pairs(e: dict[str, Any]) -> list[float]:
    """The auto / fp32 speed ratio of each alternating pair of epochs."""
    return [a / f for f, a in zip(e["fp32"].get("all", []), e["auto"].get("all", [])) if f]


def _pair_ratios(e: dict[str, Any]) -> str:
    """The pairs' ratios (:func:`_pairs`) with the 95 % t-interval of their mean."""
    from analysis.ablation import t_interval

    pairs = _pairs(e)
    if len(pairs) < 2:
        return ""
    lo, hi = t_interval(pairs)
    return (f" Ratio of each alternating pair: mean {statistics.mean(pairs):.2f}x [95 % CI {lo:.2f}, {hi:.2f}], "
            f"from {min(pairs):.2f}x to {max(pairs):.2f}x.")


def step_goal(p: dict[str, Any]) -> tuple[str, str, bool | str]:
    """The issue's speed goal: on a bf16-capable CPU the default config's epoch in auto >= 2x fp32."""
    e, flags = p["epoch"], p.get("machine", {}).get("cpu_bf16_flags") or []
    cpu = p.get("machine", {}).get("cpu")
    measured = f"{e['speedup_auto_over_fp32']:.2f}x ({cpu}: {', '.join(flags) or 'no bf16 flags'})"
    if not flags:
        return ("auto = fp32 on a CPU without bf16 (nothing changes)", measured,
                e["auto_resolved"]["precision"] == "fp32")
    met: bool | str = e["speedup_auto_over_fp32"] >= 2.0
    pairs = _pairs(e)
    if met and len(pairs) >= 2:
        from analysis.ablation import t_interval

        lo, _ = t_interval(pairs)
        measured += f"; pairs' 95 % CI from {lo:.2f}x"
        met = True if lo >= 2.0 else "on medians only"
    return ("default-config epoch in auto >= 2x fp32 on a bf16-capable CPU", measured, met)


LABELS = {"test_knn": "test kNN top-1", "linear_probe": "linear probe top-1 (test)", "val_knn": "validation kNN top-1"}


def render_parity(r: dict[str, Any]) -> list[str]:
    """The quality-parity result as page lines."""
    s = r.get("summary", {})
    seeds = s.get("seeds_paired", [])
    o = r.get("overrides", {})
    out = [f"`{r['config']}` with {', '.join(f'{k} = {v}' for k, v in o.items())}, seeds "
           f"{', '.join(map(str, r['seeds']))}; each seed trained in fp32 and in bf16 (autocast on the encoders; loss, "
           f"queue, momentum update and evaluation in fp32), memory format {r.get('memory_format', 'contiguous')} in "
           "both; full-set kNN (55k bank) and a linear probe on frozen features. Paired seeds finished: "
           f"{len(seeds)} of {len(r['seeds'])}"
           + (" (**partial run**)" if r.get("partial") else "") + "."
           + (f" **Reduced protocol**: {o.get('epochs', 10)} epochs on {o.get('train_subset') or 55000:,} images "
              "instead of the default config's 10 epochs on all 55k (the full protocol is `python -m bench.precision`)."
              if o.get("train_subset") or o.get("epochs", 10) < 10 else ""), "",
           "| metric (%) | fp32 per seed | bf16 per seed | bf16 - fp32: mean [95 % CI] | fp32 seeds' sd | "
           "beyond the seeds' spread? |", "|---|---|---|---|---|---|"]
    for metric, label in LABELS.items():
        m = s.get(metric)
        if not m:
            continue
        ci = m["ci95"]
        verdict = {True: "**yes, bf16 costs accuracy**", False: "no", None: "n/a (fewer than 2 pairs)"}[
            m["costs_accuracy"]]
        out.append(f"| {label} | {', '.join(_num(v) for v in m['fp32'])} | {', '.join(_num(v) for v in m['bf16'])} | "
                   f"{_num(m['mean_diff'])} [{_num(ci[0])}, {_num(ci[1])}] | {_num(m['fp32_sd'])} | {verdict} |")
    times = [(run.get("fp32", {}).get("train_s"), run.get("bf16", {}).get("train_s")) for run in r["runs"].values()]
    ratios = [f / b for f, b in times if f and b]
    if ratios:
        out += ["", f"Training time fp32 / bf16 per seed (sequential runs on the shared machine, whose load changed "
                "between them, so not a speed figure; see section 1): "
                f"{', '.join(f'{x:.2f}x' for x in ratios)}."]
    return out + [""]


def parity_goal(r: dict[str, Any]) -> list[tuple[str, str, bool | str | None]]:
    m = r.get("summary", {}).get("test_knn")
    if not m:
        return []
    met: bool | str | None = None if m["costs_accuracy"] is None else not m["costs_accuracy"]
    if r.get("partial") and met is not None:
        met = "partial run: " + ("within" if met else "beyond") + " the spread so far"
    return [("bf16 test kNN within the seeds' spread of fp32",
             f"{_num(m['mean_diff'])} points [{_num(m['ci95'][0])}, {_num(m['ci95'][1])}]", met)]


if __name__ == "__main__":
    sys.exit(main())
