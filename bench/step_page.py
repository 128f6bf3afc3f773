"""The training-step benchmark (bench/step.py) behind the common benchmark interface: its title, its run from
``bench/run.py``, its page section and its goals, and how a new result joins the saved one (:func:`merge_parts`).
bench/step.py measures; this module calls it, keeps its results and renders them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import Context, cpu_tag, malloc_note, read_json
from bench.page import Goal, both, goal_sentence, num, pct, provenance

TITLE = "1. Training step"
MAX_RATIO = 1.0  #: our step over the reference step (ratio of minimums): at least as fast
MAX_SELECTION_SHARE = 0.05  #: selection + filter, as a share of a ResNet-18 step at B = 256


def run(ctx: Context) -> dict[str, Any]:
    from bench import step

    result = step.run(ctx.quick, command="python bench/run.py (bench.step.run)")
    previous = read_json(Path(ctx.results_dir) / "step.json") if ctx.results_dir else None
    return merge_parts(provenance(previous)["result"] if previous else None, result, step.PARTS)


PER_CPU_PARTS = ("precision", "phases")  #: parts whose figures depend on the CPU: each CPU keeps its latest run


def merge_parts(previous: dict | None, new: dict, parts: tuple[str, ...]) -> dict:
    """``previous`` with ``new``'s ``parts`` replacing its own (all of it after a full run, whose ``parts`` include
    "reference"). A replaced part of :data:`PER_CPU_PARTS` measured on another CPU moves to ``<part>_other_cpus``
    (CPU tag -> part; bench.common.cpu_tag), so each CPU keeps its latest figures."""
    previous = previous or {}
    out = dict(new) if "reference" in parts else {**previous, **{p: new[p] for p in parts if p in new}}
    for part in PER_CPU_PARTS:
        old, fresh = previous.get(part), new.get(part)
        if part in parts and old and fresh:
            others = dict(previous.get(f"{part}_other_cpus") or {})
            others[cpu_tag(old.get("machine") or {})] = old
            others.pop(cpu_tag(fresh.get("machine") or {}), None)
            out[f"{part}_other_cpus"] = others
    return out


def per_cpu(r: dict, part: str) -> list[dict]:
    """``r``'s ``part`` (this CPU's latest run), then the same part kept from other CPUs by :func:`merge_parts`."""
    return [p for p in (r.get(part), *(r.get(f"{part}_other_cpus") or {}).values()) if p]


def worst_selection_share(r: dict) -> float:
    """The largest added cost of selection + filter measured, as a share of a ResNet-18 step."""
    return max([row.get(k, {}).get("added_share_of_resnet18_step", 0) for row in r.get("selection_cost", [])
                for k in ("rho=0.5", "rho=0.8")] or [0])


def _negatives(n: dict, resnet18_step_s: float | None) -> list[str]:
    """Part 5: each negative-sampling strategy's bare step and loss path against plain MoCo v2, and the loss path's
    added cost as a share of a ResNet-18 step at the same B (the backbone the goal is usually met or missed on)."""
    machine = n.get("machine") or {}
    load, share = machine.get("load_average_at_start"), n.get("cpu_share")
    out = [f"Negative sampling (part 5; `{n.get('command')}`, {n.get('date')}, {n['precision']}, K = "
           f"{n['queue_size']}, B = {n['batch']}, {n['repeats']} alternating repeats{malloc_note(machine)}"
           + (f"; load average at start {load[0]:.1f} on {machine.get('cpu_count')} cores" if load else "")
           + (f"; the benchmark had {pct(share, 0)} of its {machine.get('torch_threads')} threads' CPU time"
              if share is not None else "") + "):", "",
           "| strategy | step (s) | added share of a plain step | loss path (s) | loss path added (s) | added share of "
           "a ResNet-18 step |", "|---|---|---|---|---|---|"]
    def r18(row: dict) -> float | None:
        return row["loss_path_added_s"] / resnet18_step_s if resnet18_step_s else None

    for name, row in n["strategies"].items():
        out.append(f"| {name} | {row['step_s']:.3f} | {pct(row['added_share_of_plain_step'])} | "
                   f"{row['loss_path_s']:.3f} | {row['loss_path_added_s']:+.3f} | {pct(r18(row))} |")
    goal = n.get("goal_added_share", 0.1)
    # disturbed: the benchmark had less than 80 % of its threads' CPU time (older results: the load average)
    noisy = share < 0.8 if share is not None else load and load[0] > 2 * (machine.get("cpu_count") or 1)

    def verdict(added, what: str) -> str:  # added(row): the strategy's added cost as a share
        over = [k for k, row in n["strategies"].items() if added(row) is not None and added(row) > goal]
        return f"{what}: " + ("**met**." if not over else "**MISSED** for " + ", ".join(over) + ".")

    out += ["", f"Goal: each strategy's step at most {100 * goal:.0f} % over plain MoCo v2. "
            + ("On the default ConvNet: **not judged**: other work took the cores during the measurement, and "
               "whole-step differences are then noise; the loss-path column is the steadier figure." if noisy else
               verdict(lambda row: row["added_share_of_plain_step"], "On the default ConvNet (whole steps)"))
            + (" " + verdict(r18, f"On a ResNet-18 step at B = 256 ({resnet18_step_s:.2f} s, the loss path's added "
                                  "time)") if resnet18_step_s else ""), ""]
    return out


def render(r: dict, figs: Path) -> list[str]:
    v = r["step_vs_reference"]
    ratio, rmin = v.get("ratio_ours_over_reference"), v.get("ratio_of_minimums")
    out = [f"ResNet-18 (CIFAR stem), B = {v['batch']}, K = {v['queue_size']}, 32x32 images; steps alternate ours / "
           "reference; seconds per step.", "",
           "| step | min | median | max | repetitions |", "|---|---|---|---|---|"]
    for name in ("ours", "reference"):
        t = v[name]
        out.append(f"| {name} | {t['min_s']:.3f} | {t['median_s']:.3f} | {t['max_s']:.3f} | {t['n']} |")
    met = rmin is not None and rmin <= MAX_RATIO
    out += ["", f"Ratio ours / reference: median {num(ratio, 3)}, of minimums {num(rmin, 3)}. "
            + goal_sentence(met, f"our step at least as fast as the reference (ratio of minimums <= {MAX_RATIO:g})")
            + ("" if met else f" Ours is {100 * (rmin - 1):.1f} % slower.")
            + (f" On medians ours is {100 * (ratio - 1):.0f} % slower; medians of a loaded shared machine are "
               "noisy, compare the min-max spread." if ratio and ratio > 1 else ""), ""]
    step256 = r.get("resnet18_step_b256", {})
    out += [f"Selection + filter cost of the loss path at B = 256, d = 128 (median of repeats; share of a ResNet-18 "
            f"step at B = 256 = {num(step256.get('seconds'), 2)} s, {step256.get('how', '')}):", "",
            "| K | plain loss (s) | rho = 0.5 added (s) | share of step | rho = 0.8 added (s) | share of step |",
            "|---|---|---|---|---|---|"]
    for row in r.get("selection_cost", []):
        a, b = row.get("rho=0.5", {}), row.get("rho=0.8", {})
        out.append(f"| {row['queue_size']} | {row['plain_loss_s']:.4f} | {num(a.get('added_s'), 4)} | "
                   f"{pct(a.get('added_share_of_resnet18_step'), 2)} | {num(b.get('added_s'), 4)} | "
                   f"{pct(b.get('added_share_of_resnet18_step'), 2)} |")
    worst = worst_selection_share(r)
    out += ["", goal_sentence(worst <= MAX_SELECTION_SHARE, f"selection <= {pct(MAX_SELECTION_SHARE, 0)} of a "
                              f"ResNet-18 step (worst measured {pct(worst, 2)})"), ""]
    d = r.get("dual_view")
    if d:
        out += [f"Dual-view loss (B = {d['batch']}, K = {d['queue_size']}): one-way step {d['one_way_s']:.3f} s, "
                f"dual-view step {d['dual_view_s']:.3f} s: added cost per extra view "
                f"{pct(d['added_per_view_share'])} of a one-way step.", ""]
    if r.get("precision"):
        from bench.precision import render_step_part

        for part in per_cpu(r, "precision"):
            out += render_step_part(part)
    if r.get("negatives"):
        out += _negatives(r["negatives"], (r.get("resnet18_step_b256") or {}).get("seconds"))
    if r.get("lightly"):
        from bench.lightly_step import render as render_lightly

        out += render_lightly(r["lightly"])
    if r.get("allocator"):
        from bench.allocator_step import render as render_allocator

        out += render_allocator(r["allocator"])
    if r.get("phases"):
        from bench.epoch_phases import render as render_phases

        for part in per_cpu(r, "phases"):
            out += render_phases(part)
    return out


def goals(r: dict) -> list[Goal]:
    from bench.precision import step_goal

    v = r["step_vs_reference"]
    worst = worst_selection_share(r)
    return [("training step at least as fast as the reference MoCo v2 step",
             f"ours / reference: {v['ratio_of_minimums']:.3f} (minimums), {v['ratio_ours_over_reference']:.3f} "
             "(medians)", both(v["ratio_of_minimums"] <= MAX_RATIO, v["ratio_ours_over_reference"] <= MAX_RATIO)),
            (f"selection + filter <= {pct(MAX_SELECTION_SHARE, 0)} of a ResNet-18 step (K up to 65536)",
             f"worst {pct(worst, 2)}", worst <= MAX_SELECTION_SHARE)] + (
        [step_goal(p) for p in per_cpu(r, "precision")])
