"""Step benchmark, part 8: where a default-config epoch's time goes, in fp32 and in ``auto``.

Issue #22 asks for default-config epochs at least 2x as fast in ``auto`` (bf16 autocast, channels-last on AMX) as in
fp32; the bare step gains more than the epoch does. This part measures why: it trains the default config's
``moco.engine.Engine`` in both precisions, alternating epochs after a warm-up epoch each, and times the phases of
every step by wrapping the Engine's own callables with wall-clock marks (the Engine's code is unchanged; a wrapped
call costs about 0.7 µs more, about a dozen per step, against a step of 0.1 s or more). The phases, in the order a
step runs them:

- ``augment``: the two views' augmentation (``engine.augment``), as in the Engine's ``data_share``;
- ``query encoder``: ``MoCo._query`` for each view (query encoder forward, cast to fp32, normalise);
- ``key encoder``: ``MoCo._key`` for each view (key shuffle, key encoder forward, normalise);
- ``queue``: the queue's snapshot and enqueue;
- ``loss``: ``moco.model.dual_view_loss`` (logits against the queue, filters, cross-entropy; fp32 in both);
- ``step statistics``: ``moco.model._step_stats`` (false-negative rate and similarity quantiles; fp32 in both);
- ``loss backward``: from the end of ``optimizer.zero_grad`` to the last gradient that reaches a query (a hook on
  ``_query``'s output): the autograd engine runs the loss's nodes first, as they were created last;
- ``encoder backward``: from there to the start of ``clip_grad_norm_``;
- ``optimizer``: the gradient norm (``clip_grad_norm_``) and ``optimizer.step``;
- ``momentum update``: the key encoder's EMA;
- ``other``: the epoch's wall time less all of the above (batching, learning-rate schedule, ``zero_grad``,
  finiteness checks, the statistics' sums).

Autocast and channels-last change only the encoders' phases (forward and backward); the others run the same fp32
code in both precisions. From the medians per step follow the epoch's ceiling (the fp32 step over ``auto``'s
non-encoder phases: the speed-up if the encoders cost nothing) and the encoder speed-up that 2x would need.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

ENCODER_PHASES = ("query encoder", "key encoder", "encoder backward")  #: what autocast and channels-last change
PHASES = ("augment", "query encoder", "key encoder", "queue", "loss", "step statistics", "loss backward",
          "encoder backward", "optimizer", "momentum update", "other")
GOAL = 2.0  #: issue #22: auto's epoch at least 2x fp32's


class _PhaseClock:
    """Seconds per phase, summed over the steps of one epoch."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.backward_start = self.last_query_grad = 0.0

    def timed(self, phase: str, fn: Callable[..., Any], after: Callable[[Any], None] | None = None) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[phase] += time.perf_counter() - start
            if after is not None:
                after(out)
            return out

        return wrapper

    def query_out(self, q: torch.Tensor) -> None:
        """Mark when the loss's gradient reaches this query (registered on ``_query``'s output)."""
        if q.requires_grad:
            q.register_hook(lambda grad: setattr(self, "last_query_grad", time.perf_counter()))

    def backward_starts(self, _: Any = None) -> None:
        self.backward_start = self.last_query_grad = time.perf_counter()

    def backward_ends(self) -> None:
        now = time.perf_counter()
        self.seconds["loss backward"] += self.last_query_grad - self.backward_start
        self.seconds["encoder backward"] += now - self.last_query_grad


@contextmanager
def phase_clock(engine: Any) -> Iterator[_PhaseClock]:
    """Time ``engine``'s phases while the block runs; everything wrapped is put back afterwards."""
    import moco.model as model_module

    clock = _PhaseClock()
    model, optimizer = engine.model, engine.optimizer
    clip = torch.nn.utils.clip_grad_norm_
    timed_clip = clock.timed("optimizer", clip)

    def clip_timed(*args: Any, **kwargs: Any) -> Any:
        clock.backward_ends()
        return timed_clip(*args, **kwargs)

    instance = {(engine, "augment"): clock.timed("augment", engine.augment),
                (model, "_query"): clock.timed("query encoder", model._query, after=clock.query_out),
                (model, "_key"): clock.timed("key encoder", model._key),
                (model.queue, "snapshot"): clock.timed("queue", model.queue.snapshot),
                (model.queue, "enqueue"): clock.timed("queue", model.queue.enqueue),
                (optimizer, "zero_grad"): clock.timed("other", optimizer.zero_grad, after=clock.backward_starts),
                (optimizer, "step"): clock.timed("optimizer", optimizer.step),
                (model, "momentum_update"): clock.timed("momentum update", model.momentum_update)}
    module = {(model_module, "dual_view_loss"): clock.timed("loss", model_module.dual_view_loss),
              (model_module, "_step_stats"): clock.timed("step statistics", model_module._step_stats),
              (torch.nn.utils, "clip_grad_norm_"): clip_timed}
    saved = {key: key[0].__dict__.get(key[1]) for key in instance}  # None: the class's method
    originals = {key: getattr(*key) for key in module}
    try:
        for (owner, name), fn in {**instance, **module}.items():
            setattr(owner, name, fn)
        yield clock
    finally:
        for (owner, name), fn in originals.items():
            setattr(owner, name, fn)
        for (owner, name), fn in saved.items():
            if fn is None:
                delattr(owner, name)
            else:
                setattr(owner, name, fn)


def timed_epoch(engine: Any) -> dict[str, Any]:
    """One ``engine.train_epoch()`` with its phases: seconds per step each, ``other`` the rest of the wall time."""
    with phase_clock(engine) as clock:
        out = engine.train_epoch()
    steps = engine.steps_per_epoch
    clock.seconds["other"] += out["epoch_s"] - sum(clock.seconds.values())
    return {"step_s": out["epoch_s"] / steps, "images_per_s": out["images_per_s"],
            "phases_s": {phase: s / steps for phase, s in clock.seconds.items()}}


def warm_engines(steps: int) -> dict[str, Any]:
    """The default config's ``Engine`` on ``steps`` batches in fp32 (contiguous) and in auto, each after one warm-up
    epoch (which also fills the queue); the pair that parts 4 and 8 alternate."""
    from bench.step import DEFAULT_CONFIG
    from moco.config import TrainConfig
    from moco.data import load_dataset
    from moco.engine import Engine

    cfg = TrainConfig.from_yaml(DEFAULT_CONFIG)
    cfg = cfg.replace(train_subset=steps * cfg.batch_size)
    data, cpu = load_dataset(cfg), torch.device("cpu")
    engines = {"fp32": Engine(cfg.replace(precision="fp32", memory_format="contiguous"), data, cpu),
               "auto": Engine(cfg.replace(precision="auto", memory_format="auto"), data, cpu)}
    for engine in engines.values():
        engine.train_epoch()
    return engines


def bench_phases(steps: int = 30, epochs: int = 5) -> dict[str, Any]:
    """Alternating fp32 / auto epochs of ``steps`` steps of the default config (after a warm-up epoch each); the
    medians of each phase's seconds per step, each phase's fp32 / auto ratio, the ceiling and what 2x needs."""
    from bench.common import CpuShare

    with CpuShare(torch.get_num_threads()) as used:
        engines = warm_engines(steps)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
        for _ in range(epochs):
            for name, engine in engines.items():
                runs[name].append(timed_epoch(engine))
    cfg = engines["fp32"].cfg
    out: dict[str, Any] = {"steps_per_epoch": steps, "epochs": epochs, "batch": cfg.batch_size,
                           "queue_size": cfg.queue_size, "views": cfg.views, "cpu_share": used.share,
                           "resolved": {name: {"precision": e.precision, "memory_format": e.memory_format}
                                        for name, e in engines.items()}}
    for name, rs in runs.items():
        out[name] = {"step_s": statistics.median(r["step_s"] for r in rs),
                     "phases_s": {p: statistics.median(r["phases_s"][p] for r in rs) for p in PHASES},
                     "all": rs}
    return {**out, **summarise(out["fp32"]["phases_s"], out["auto"]["phases_s"])}


def summarise(fp32: dict[str, float], auto: dict[str, float]) -> dict[str, Any]:
    """From two precisions' phases (seconds per step): the step speed-up summed over phases, the encoders' own
    speed-up, the ceiling (encoders at zero cost in auto) and the encoder speed-up that :data:`GOAL` would need
    (None: out of reach even at zero cost)."""
    total_fp32, total_auto = sum(fp32.values()), sum(auto.values())
    enc_fp32, enc_auto = (sum(d[p] for p in ENCODER_PHASES) for d in (fp32, auto))
    rest_auto = total_auto - enc_auto
    room = total_fp32 / GOAL - rest_auto  # what the encoders may take in auto for the goal
    return {"speedup": total_fp32 / total_auto, "encoder_speedup": enc_fp32 / enc_auto,
            "encoder_share_fp32": enc_fp32 / total_fp32, "rest_share_auto": rest_auto / total_auto,
            "ceiling": total_fp32 / rest_auto, "encoder_speedup_needed": enc_fp32 / room if room > 0 else None}


def render(p: dict[str, Any]) -> list[str]:
    """Part 8 as page lines."""
    m = p.get("machine") or {}
    res = p["resolved"]["auto"]
    out = [f"**Where an epoch's time goes**{' (quick mode)' if p.get('quick') else ''} (part 8; "
           f"`{p.get('command')}`, {p.get('date')}, {m.get('cpu')}, "
           f"{m.get('torch_threads')} torch threads"
           + (f"; the benchmark had {100 * p['cpu_share']:.0f} % of its threads' CPU time" if p.get("cpu_share")
              else "") + f"): the default config's Engine, {p['epochs']} alternating epochs of {p['steps_per_epoch']} "
           f"steps per precision after a warm-up epoch each (B = {p['batch']}, K = {p['queue_size']}, "
           f"{'dual-view' if p['views'] == 2 else 'one-way'}); `auto` is {res['precision']}, "
           f"{res['memory_format']}. Phases timed inside the epochs (bench/epoch_phases.py); milliseconds per step, "
           "medians over the epochs:", "",
           "| phase | fp32 | auto | fp32 / auto | share of auto's step |", "|---|---|---|---|---|"]
    f, a = p["fp32"]["phases_s"], p["auto"]["phases_s"]
    total_auto = sum(a.values())
    for phase in PHASES:
        mark = " (encoders)" if phase in ENCODER_PHASES else ""
        ratio = f"{f[phase] / a[phase]:.2f}x" if a[phase] > 0 else "–"
        out.append(f"| {phase}{mark} | {1e3 * f[phase]:.1f} | {1e3 * a[phase]:.1f} | {ratio} | "
                   f"{100 * a[phase] / total_auto:.1f} % |")
    out.append(f"| **step** | {1e3 * sum(f.values()):.1f} | {1e3 * total_auto:.1f} | {p['speedup']:.2f}x | 100 % |")
    needed = p["encoder_speedup_needed"]
    out += ["", f"The encoders' phases run {p['encoder_speedup']:.2f}x as fast in `auto` and take "
            f"{100 * p['encoder_share_fp32']:.0f} % of the fp32 step; the other phases, the same fp32 code in both, "
            f"take {100 * p['rest_share_auto']:.0f} % of `auto`'s step. Even with encoders at no cost the epoch could "
            f"be at most {p['ceiling']:.2f}x as fast as fp32; "
            + (f"the {GOAL:g}x goal needs the encoders {needed:.2f}x as fast as in fp32." if needed else
               f"the {GOAL:g}x goal is out of reach without making the other phases faster."), ""]
    return out
