"""Benchmark: memory of the default study and of the key queue.

1. The study's process tree (the study driver ``study/run.py``, Ray's own processes, Tune trial drivers, Train
   controllers and the training workers) sampled every second during the first TPE + ASHA study of
   bench/efficiency.py: peak resident memory (VmHWM) of each process by role, and the peak of the tree's total
   proportional set size (PSS: shared pages are split between the processes that map them, so the sum is not
   inflated by shared libraries or Ray's shared-memory object store). Goal: the default study stays under 4 GiB.
   When the efficiency benchmark did not run in the same invocation this part is read from
   ``bench/results/efficiency.json`` if present, else reported as not measured.
2. One training process without Ray: peak RSS of a fresh process that loads Fashion-MNIST and trains one epoch of the
   default study's base config on a small subset with ``moco.engine.Engine`` (what a trial worker holds, minus Ray).
3. The key queue at K = 65536, dim = 128: analytic size (K x dim x 4 bytes + ids and labels, 8 bytes each) and the
   bytes of ``moco.queue.KeyQueue``'s buffers.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bench.common import PYTHON, ROOT, read_json

GOAL_GIB = 4.0

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
cfg = load_space(%(space)r).base.replace(epochs=1, train_subset=%(subset)d, final_eval=False)
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


def run(quick: bool, workdir: Path | None = None, context: dict[str, Any] | None = None,
        results_dir: Path | None = None) -> dict[str, Any]:
    eff = (context or {}).get("efficiency")
    source = "the efficiency benchmark of this invocation (first TPE + ASHA study)"
    if eff is None and results_dir is not None:
        saved = read_json(Path(results_dir) / "efficiency.json")
        eff = saved.get("result") if saved else None
        source = "bench/results/efficiency.json (an earlier invocation)"
    study = None
    if eff and eff.get("studies", {}).get("tpe_asha") and eff["studies"]["tpe_asha"][0].get("memory"):
        record = eff["studies"]["tpe_asha"][0]
        mem = record["memory"]
        total_gib = mem["peak_total_pss_mib"] / 1024
        study = {"source": source, "mode": "quick" if eff.get("quick") else "full", "command": record["command"],
                 **mem, "peak_total_pss_gib": total_gib, "goal": f"study total < {GOAL_GIB:g} GiB",
                 "goal_met": bool(total_gib < GOAL_GIB)}
    return {"study": study if study else "not measured (run the efficiency benchmark in the same invocation)",
            "engine_process": engine_process(quick), "queue_65536": queue_memory()}
