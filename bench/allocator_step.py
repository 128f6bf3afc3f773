"""Step benchmark, part 7: default-config epochs with malloc keeping freed memory (moco/allocator.py) and without.

Each variant runs in a fresh process (the malloc setting is per process and cannot be undone): the default config's
``moco.engine.Engine`` trains a warm-up epoch and then ``epochs`` epochs of ``steps`` steps, either in the process's
main thread (as the benchmarks, ``bench.longrun`` and a run without Ray train) or in a second thread (as Ray Train V2
runs the training function on its workers), with ``MOCO_RETAIN_FREED_MEMORY`` = 1 (kept) or 0 (glibc's defaults),
in fp32 and in bf16. The variants run round-robin ``rounds`` times, so that load drift hits all alike; a variant's
figure is the median of its epochs' images per second over all rounds.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import subprocess
import sys
from typing import Any

from moco.allocator import OPT_OUT_ENV

PRECISIONS, THREADS, MALLOC = ("fp32", "bf16"), ("main", "worker"), ("kept", "defaults")

# The child: prints its epochs' images/s as JSON (argv: precision, thread, steps, epochs).
_CHILD = """
import json, sys, threading, torch
from bench.step import DEFAULT_CONFIG
from moco.config import TrainConfig
from moco.data import load_dataset
from moco.engine import Engine

precision, thread, steps, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = TrainConfig.from_yaml(DEFAULT_CONFIG)
cfg = cfg.replace(train_subset=steps * cfg.batch_size, precision=precision, memory_format="contiguous")
rates, kept = [], []

def train():
    engine = Engine(cfg, load_dataset(cfg), torch.device("cpu"))
    kept.append(engine.retains_freed_memory)
    engine.train_epoch()  # warm-up
    rates.extend(engine.train_epoch()["images_per_s"] for _ in range(epochs))

if thread == "worker":
    t = threading.Thread(target=train)
    t.start()
    t.join()
else:
    train()
print(json.dumps({"images_per_s": rates, "retains_freed_memory": kept[0]}))
"""


def _child(precision: str, thread: str, malloc: str, steps: int, epochs: int) -> dict[str, Any]:
    env = {**os.environ, OPT_OUT_ENV: "1" if malloc == "kept" else "0"}
    done = subprocess.run([sys.executable, "-c", _CHILD, precision, thread, str(steps), str(epochs)], env=env,
                          capture_output=True, text=True, timeout=1800, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_allocator(steps: int = 30, epochs: int = 3, rounds: int = 2) -> dict[str, Any]:
    """Images/s of every (precision, thread, malloc) variant; ``kept_over_defaults`` per precision and thread."""
    variants = list(itertools.product(PRECISIONS, THREADS, MALLOC))
    rates: dict[tuple[str, str, str], list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            got = _child(*v, steps=steps, epochs=epochs)
            if got["retains_freed_memory"] != (v[2] == "kept"):
                return {"skipped": "malloc's thresholds could not be set here (not glibc)"}
            rates[v] += got["images_per_s"]
    out: dict[str, Any] = {"steps_per_epoch": steps, "epochs_per_process": epochs, "rounds": rounds, "variants": {}}
    for p, t in itertools.product(PRECISIONS, THREADS):
        med = {m: statistics.median(rates[(p, t, m)]) for m in MALLOC}
        row: dict[str, Any] = {m: {"images_per_s": med[m], "all": rates[(p, t, m)]} for m in MALLOC}
        out["variants"][f"{p}, {t} thread"] = {**row, "kept_over_defaults": med["kept"] / med["defaults"]}
    return out


def render(a: dict[str, Any]) -> list[str]:
    """Part 7 as page lines."""
    cpu = a.get("machine", {}).get("cpu")
    head = (f"**Freed memory kept or not** (part 7; `{a.get('command')}`, {a.get('date')}, {cpu}; default config, "
            "a process per variant, round-robin)")
    if a.get("skipped"):
        return [head + f": skipped ({a['skipped']}).", ""]
    out = [head + f": {a['epochs_per_process']} epochs of {a['steps_per_epoch']} steps after a warm-up epoch per "
           f"process, {a['rounds']} rounds; images/s, medians over all rounds' epochs. `kept` is moco/allocator.py "
           "(what every Engine now sets), `defaults` is glibc's malloc (`MOCO_RETAIN_FREED_MEMORY=0`); the worker "
           "thread is where Ray Train V2 runs the training function.", "",
           "| precision, thread | kept | defaults | kept / defaults |", "|---|---|---|---|"]
    for name, v in a["variants"].items():
        out.append(f"| {name} | {v['kept']['images_per_s']:,.0f} | {v['defaults']['images_per_s']:,.0f} | "
                   f"{v['kept_over_defaults']:.2f}x |")
    return out + [""]
