"""Benchmark: memory of the default study and of the key queue.

1. The study's process tree (the study driver ``study/run.py``, Ray's own processes, Tune trial drivers, Train
   controllers and the training workers) sampled every second during the first TPE + ASHA study of
   bench/efficiency.py: peak resident memory (VmHWM) of each process by role, and the peak of the tree's total
   proportional set size (PSS: shared pages are split between the processes that map them, so the sum is not
   inflated by shared libraries or Ray's shared-memory object store). Goal: the default study stays under 4 GiB.
   Taken from the first source that has it: the efficiency or overhead benchmark of the same invocation, then the
   newer of ``bench/results/efficiency.json`` and ``overhead.json``; else reported as not measured.
2. One training process without Ray: peak RSS of a fresh process that loads Fashion-MNIST and trains one epoch of the
   default study's base config on a small subset with ``moco.engine.Engine`` (what a trial worker holds, minus Ray).
3. Two 1-thread trials at once (full mode only): the first 4 trials of the default study's search run with
   ``--cpus-per-worker 1`` (two at a time on 2 cores), its process tree sampled the same way. Goal (issue #18): under
   4 GiB in all, so that the default could run two trials at once where that is faster.
4. The key queue at K = 65536, dim = 128: analytic size (K x dim x 4 bytes + ids and labels, 8 bytes each) and the
   bytes of ``moco.queue.KeyQueue``'s buffers.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bench.common import PYTHON, ROOT, Context, saved_result
from bench.page import Goal, goal_sentence, num, spread

GOAL_GIB = 4.0  #: the default study's whole process tree (PSS); also for two 1-thread trials at once
TWO_TRIALS = ["--num-samples", "4", "--cpus-per-worker", "1"]  #: study/run.py options of part 3
TITLE = "7. Memory"

_CHILD = r"""
import json, sys, torch
sys.path.insert(0, %(root)r)
from study.space import load_space
from moco.data import load_dataset
from moco.engine import Engine
def kib(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1])
before = kib('VmHWM')
cfg = load_space(%(space)r).base.replace(compute_budget=1, train_subset=%(subset)d, final_eval=False)
data = load_dataset(cfg)
loaded = kib('VmHWM')
engine = Engine(cfg, data, torch.device('cpu'))
engine.train_epoch()
engine.monitor()
print(json.dumps({'after_imports_mib': before / 1024, 'after_data_mib': loaded / 1024,
                  'peak_mib': kib('VmHWM') / 1024, 'train_subset': cfg.train_subset,
                  'queue_size': cfg.queue_size, 'width': cfg.width}))
"""


def queue_memory(size: int = 65536, dim: int = 128) -> dict[str, Any]:
    from moco.queue import KeyQueue

    queue = KeyQueue(size, dim)
    measured = sum(b.numel() * b.element_size() for b in queue.buffers())
    analytic = size * dim * 4 + size * 8 * 2
    return {"K": size, "dim": dim, "keys_bytes": size * dim * 4, "ids_labels_bytes": size * 16,
            "analytic_mib": analytic / 2**20, "measured_buffers_mib": measured / 2**20}


def engine_process(quick: bool) -> dict[str, Any]:
    script = _CHILD % {"root": str(ROOT), "space": str(ROOT / "configs" / "hardneg.yaml"),
                       "subset": 1024 if quick else 12000}
    proc = subprocess.run([PYTHON, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"engine memory probe failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def against_goal(memory: dict[str, Any]) -> dict[str, Any]:
    """A sampled tree's peak total PSS in GiB and whether it is under the goal."""
    total_gib = memory["peak_total_pss_mib"] / 1024
    return {"peak_total_pss_gib": total_gib, "goal_met": bool(total_gib < GOAL_GIB)}


def by_role(pss_mib: dict[str, float]) -> str:
    """PSS by role, largest first: "train worker 1988, ray helper actor 694, ..." (MiB)."""
    return ", ".join(f"{role} {mib:.0f}" for role, mib in sorted(pss_mib.items(), key=lambda kv: -kv[1]))


def two_trials(workdir: Path) -> dict[str, Any]:
    """Part 3: peak memory of the default study's search with two 1-thread trials at once (its first 4 trials)."""
    from bench.overhead import run_default_search

    record = run_default_search(Path(workdir) / "memory" / "two-trials", False, sample_memory=True, extra=TWO_TRIALS)
    return {"command": record["command"], "wall_s": record["wall_s"], **record["memory"],
            **against_goal(record["memory"])}


def run(ctx: Context) -> dict[str, Any]:
    quick, results_dir = ctx.quick, ctx.results_dir
    study = None
    candidates = [(ctx.results.get("efficiency"), "the efficiency benchmark of this invocation"),
                  (ctx.results.get("overhead"), "the overhead benchmark's own study in this invocation")]
    if results_dir is not None:  # the newest saved study first (an older efficiency run must not hide it)
        saved = [(saved_result(results_dir, name), name) for name in ("efficiency", "overhead")]
        for result, name in sorted((x for x in saved if x[0]), key=lambda x: str(x[0].get("date")), reverse=True):
            candidates.append((result, f"bench/results/{name}.json ({result['date']})"))
    for result, source in candidates:
        if not result:
            continue
        record = None
        if result.get("studies", {}).get("tpe_asha"):
            record = {**result["studies"]["tpe_asha"][0], "label": "first TPE + ASHA study"}
        elif result.get("memory"):
            record = {"memory": result["memory"], "command": result.get("study_command"), "label": "TPE + ASHA study"}
        if not record or not record.get("memory"):
            continue
        mem = record["memory"]
        study = {"source": f"{source}, {record['label']}", "mode": "quick" if result.get("quick") else "full",
                 "command": record["command"], **mem, "goal": f"study total < {GOAL_GIB:g} GiB",
                 **against_goal(mem)}
        break
    return {"study": study if study else "not measured (run the efficiency benchmark in the same invocation)",
            "engine_process": engine_process(quick), "queue_65536": queue_memory(),
            **({} if quick else {"two_trials": two_trials(ctx.workdir)})}


# --- the page -----------------------------------------------------------------------------------------------------
def render(r: dict, figs: Path) -> list[str]:
    out = []
    st = r["study"]
    if isinstance(st, dict):
        out += [f"Study process tree ({st['mode']} mode, {st['source']}; `{st['command']}`), sampled every "
                f"{st['interval_s']:g} s ({st['samples']} samples, {st['processes']} processes):", "",
                "| role | processes | peak RSS (MiB): min / **median** / max |", "|---|---|---|"]
        for role, s in st["peak_rss_mib_by_role"].items():
            out.append(f"| {role} | {s['count']} | {spread(s, 0)} |")
        at_peak = st.get("pss_mib_by_role_at_peak")
        if at_peak:
            out += ["", f"At the moment of the peak, PSS by role (MiB): {by_role(at_peak)}."]
        if "peak_total_anon_mib" not in st:
            out += ["", "*This result predates the role fix: Ray workers first sampled before they set their process "
                    "title were counted as `raylet`; the per-process peaks and the totals are unaffected.*"]
        out += ["", f"Peak total of the tree: {num(st['peak_total_pss_mib'], 0)} MiB PSS "
                f"({num(st['peak_total_rss_mib'], 0)} MiB summed RSS, which counts shared pages once per process; "
                f"{num(st.get('peak_total_anon_mib'), 0)} MiB private anonymous memory, a lower bound). "
                + goal_sentence(st["goal_met"], f"the default study under {GOAL_GIB:g} GiB in total")
                + (" Measured on the quick-mode study; the default study has larger trials." if st["mode"] == "quick"
                   else ""), ""]
    else:
        out += [f"Study process tree: {st}.", ""]
    two = r.get("two_trials")
    if two:
        out += [f"Two 1-thread trials at once (the default study's search, its first 4 trials at `--cpus-per-worker "
                f"1`; `{two['command']}`, {num(two['wall_s'], 0)} s): peak total {num(two['peak_total_pss_mib'], 0)} "
                f"MiB PSS; at the peak, by role (MiB): {by_role(two['pss_mib_by_role_at_peak'])}. "
                + goal_sentence(two["goal_met"], f"two 1-thread trials under {GOAL_GIB:g} GiB in total"), ""]
    e = r["engine_process"]
    q = r["queue_65536"]
    out += [f"One training process without Ray (default study base, {e['train_subset']} training images, K = "
            f"{e['queue_size']}, width {e['width']}): peak RSS {num(e['peak_mib'], 0)} MiB (after imports "
            f"{num(e['after_imports_mib'], 0)} MiB, after loading Fashion-MNIST {num(e['after_data_mib'], 0)} MiB).",
            "", f"Key queue at K = {q['K']}, dim = {q['dim']}: keys {q['keys_bytes'] / 2**20:.1f} MiB + ids and "
            f"labels {q['ids_labels_bytes'] / 2**20:.1f} MiB = {num(q['analytic_mib'], 1)} MiB analytic; "
            f"KeyQueue buffers measured {num(q['measured_buffers_mib'], 1)} MiB.", ""]
    return out


def goals(r: dict) -> list[Goal]:
    st = r.get("study")
    if not isinstance(st, dict):
        return []
    out = [(f"default study under {GOAL_GIB:g} GiB in total", f"{st['peak_total_pss_gib']:.2f} GiB PSS",
            st["goal_met"])]
    two = r.get("two_trials")
    if two:
        out.append((f"two 1-thread trials under {GOAL_GIB:g} GiB in total", f"{two['peak_total_pss_gib']:.2f} GiB PSS",
                    two["goal_met"]))
    return out
