"""Benchmark: cost of our MoCo training step and of selective negatives.

1. A full training step of ``moco.model.MoCo`` in MoCo v2 mode (lambda = 1, rho = 1, delta = 1) against a
   straightforward reference MoCo v2 step written here (:class:`_ReferenceMoCoV2`, after facebookresearch/moco
   ``moco/builder.py``: clone of the queue, einsum logits, cross-entropy with label 0, pointer enqueue). This is the
   project's one deliberate second copy of the loss, kept only as a timing baseline. Both use the same ResNet-18 (CIFAR
   stem, plain BatchNorm: ``bn_mode='none'`` for ours, no shuffle in the reference) on 32x32 images, the same batch and
   queue. B = 64 by default because a ResNet-18 step at 32x32 takes seconds on a 2-core CPU. Steps alternate
   (ours, reference, ours, ...) so load drift hits both alike; ratio = median(ours) / median(reference), and the
   ratio of minimums, which is the steadier figure on a shared, loaded machine.
2. The loss path alone (similarities, selection, cross-entropy, backward to q) at B = 256, d = 128, K in
   4096..65536: plain MoCo v2 vs selective (same-id filter, threshold 0.9, rho = 0.5 and 0.8: the gather and the
   mask code paths); the added cost is reported as
   a share of a ResNet-18 step at B = 256 (measured in the full run; linearly extrapolated from B = 64 in quick mode).
3. The dual-view loss's added cost per view: a step with lambda = 0.5 vs lambda = 1 (B = 64).
4. Precision and memory format (:func:`bench_precision`): the bare MoCo step of the default config (ConvNet width 32,
   B = 256, 28x28; query forward and backward, key forward, SGD, momentum update; random inputs) in fp32,
   channels-last, bf16 autocast and both, each also with ``bn_mode: none`` (plain BatchNorm instead of the default
   split BatchNorm), alternating; then whole training epochs of the default config through
   ``moco.engine.Engine`` (augmentation included) in ``precision: fp32`` and in ``auto``, alternating. Ratios are of
   medians taken side by side. The CPU model and its bf16 flags are in every result file (``machine``).

5. Negative sampling (:func:`bench_negatives`): the bare step of the default config with K = 16384, B = 256 (a full
   queue of random keys) under each strategy of moco/negatives.py at its defaults (and top-rho = 0.05), alternating
   with plain MoCo v2; the added share of a plain step (goal: at most 10 %), and the loss path alone (forward and
   backward to q) for each.

6. Against lightly 1.6 (``bench/lightly_step.py``): our step and lightly's MoCo recipe on the same backbone, fp32 and
   bf16, alternating.
7. Freed memory kept or not (``bench/allocator_step.py``): default-config epochs with moco/allocator.py's malloc
   setting and with glibc's defaults, in the main thread and in a worker thread, fp32 and bf16, a process each.
8. Where an epoch's time goes (``bench/epoch_phases.py``): the phases of default-config Engine epochs (augmentation,
   encoders, loss, backward, optimizer, ...) in fp32 and in auto, alternating.

``python -m bench.step [--quick] [--parts NAMES]`` prints the results and writes ``bench/results/step.json``;
``--parts precision`` (or ``negatives``, ``lightly``, ``allocator``, ``phases``) runs that part only and replaces
just that part of an existing result file (a precision or phases part from another CPU is kept, under
``precision_other_cpus`` or ``phases_other_cpus``). Every process of this benchmark keeps freed memory as the Engine
does (part 7 excepted).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bench.common import CpuShare, machine
from bench import step_page
from bench.precision import PLAIN_BN
from moco.backbones import build_backbone
from moco.config import TrainConfig
from moco.losses import contrastive_loss
from moco.model import MoCo, build_model
from moco.precision import autocast, cpu_bf16_flags, resolve_memory_format, resolve_precision, torch_memory_format

IMAGE = 32
DIM, HIDDEN = 128, 512
RESULTS = Path(__file__).parent / "results" / "step.json"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "fashion_mnist.yaml"
#: "reference" is parts 1-3 (ResNet-18 step, selection, dual view); the others are parts 4-8
PARTS = ("reference", "precision", "negatives", "lightly", "allocator", "phases")
#: (name, precision, memory format) of the bare-step variants of part 4
LAYOUTS = (("fp32", "fp32", "contiguous"), ("channels_last", "fp32", "channels_last"),
           ("bf16", "bf16", "contiguous"), ("channels_last+bf16", "bf16", "channels_last"))


class _ReferenceMoCoV2(nn.Module):
    """Timing baseline only: the textbook MoCo v2 step (second copy on purpose; see the module docstring)."""

    def __init__(self, queue_size: int, temperature: float = 0.2, m: float = 0.99):
        super().__init__()
        torch.manual_seed(0)
        backbone, feat = build_backbone("resnet18", 3, cifar_stem=True)
        self.encoder_q = nn.Sequential(backbone, nn.Linear(feat, HIDDEN), nn.ReLU(inplace=True), nn.Linear(HIDDEN, DIM))
        self.encoder_k = copy.deepcopy(self.encoder_q).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(DIM, queue_size), dim=0))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.t, self.m = temperature, m

    def forward(self, im_q, im_k):
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            for pk, pq in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
                pk.mul_(self.m).add_(pq.detach(), alpha=1 - self.m)
            k = F.normalize(self.encoder_k(im_k), dim=1)
        l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
        l_neg = torch.einsum("nc,ck->nk", q, self.queue.clone().detach())
        logits = torch.cat([l_pos, l_neg], dim=1) / self.t
        loss = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))
        with torch.no_grad():
            ptr, b = int(self.ptr), k.shape[0]
            assert self.queue.shape[1] % b == 0
            self.queue[:, ptr:ptr + b] = k.t()
            self.ptr.fill_((ptr + b) % self.queue.shape[1])
        return loss


def _ours(queue_size: int, weight: float = 1.0) -> MoCo:
    torch.manual_seed(0)
    backbone, feat = build_backbone("resnet18", 3, cifar_stem=True)
    model = MoCo(backbone, feat, dim=DIM, mlp_hidden=HIDDEN, queue_size=queue_size, temperature=0.2,
                 dual_view_weight=weight, bn_mode="none")
    with torch.no_grad():  # a full queue, like the reference's random one
        model.queue.enqueue(F.normalize(torch.randn(queue_size, DIM), dim=1), torch.arange(queue_size) + 10**6)
    return model


def _step_fn(model: nn.Module, batch: int, ours: bool) -> Callable[[], None]:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(batch, 3, IMAGE, IMAGE, generator=g), torch.randn(batch, 3, IMAGE, IMAGE, generator=g)
    ids = torch.arange(batch)

    def step():
        loss = model(x1, x2, ids)[0] if ours else model(x1, x2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ours:
            model.momentum_update(0.99)

    return step


def _time(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _summary(times: list[float]) -> dict:
    return {"min_s": min(times), "median_s": statistics.median(times), "max_s": max(times), "n": len(times)}


def _alternating(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_time(fn))
    return times


def bench_step_vs_reference(batch: int, queue_size: int, repeats: int) -> dict:
    times = _alternating({"ours": _step_fn(_ours(queue_size), batch, True),
                          "reference": _step_fn(_ReferenceMoCoV2(queue_size), batch, False)}, repeats)
    ours, ref = _summary(times["ours"]), _summary(times["reference"])
    return {"batch": batch, "queue_size": queue_size, "ours": ours, "reference": ref,
            "ratio_ours_over_reference": ours["median_s"] / ref["median_s"],
            "ratio_of_minimums": ours["min_s"] / ref["min_s"]}


def _loss_path_fn(batch: int, queue_size: int, ratio: float | None) -> Callable[[], None]:
    """Loss forward + backward to q; ``ratio=None`` is plain MoCo v2, else same-id filter, threshold 0.9 and
    ``ratio``."""
    g = torch.Generator().manual_seed(2)
    q = F.normalize(torch.randn(batch, DIM, generator=g), dim=1).requires_grad_()
    k = F.normalize(torch.randn(batch, DIM, generator=g), dim=1)
    queue = F.normalize(torch.randn(queue_size, DIM, generator=g), dim=1)
    kw = dict(query_ids=torch.arange(batch), queue_ids=torch.randint(0, 50000, (queue_size,), generator=g),
              ratio=ratio, threshold=0.9) if ratio is not None else {}

    def step():
        q.grad = None
        contrastive_loss(q, k, queue, 0.2, **kw)[0].backward()

    return step


SELECTIVE_RATIOS = (0.5, 0.8)  # the two code paths: gather the kept logits (<= 1/2) or mask the dropped ones


def bench_selection(batch: int, sizes: list[int], repeats: int, step_seconds: float) -> list[dict]:
    rows = []
    for size in sizes:
        fns = {"plain": _loss_path_fn(batch, size, None)}
        fns.update({f"rho={r}": _loss_path_fn(batch, size, r) for r in SELECTIVE_RATIOS})
        times = {name: statistics.median(ts) for name, ts in _alternating(fns, repeats).items()}
        row = {"queue_size": size, "batch": batch, "plain_loss_s": times["plain"]}
        for r in SELECTIVE_RATIOS:
            added = times[f"rho={r}"] - times["plain"]
            row[f"rho={r}"] = {"selective_loss_s": times[f"rho={r}"], "added_s": added,
                               "added_share_of_resnet18_step": added / step_seconds}
        rows.append(row)
    return rows


def bench_resnet_step(batch: int, repeats: int) -> float:
    times = _alternating({"ours": _step_fn(_ours(max(4096, batch)), batch, True)}, repeats)
    return statistics.median(times["ours"])


def bench_dual_view(batch: int, queue_size: int, repeats: int) -> dict:
    times = _alternating({"one_way": _step_fn(_ours(queue_size, 1.0), batch, True),
                          "dual_view": _step_fn(_ours(queue_size, 0.5), batch, True)}, repeats)
    one, dual = statistics.median(times["one_way"]), statistics.median(times["dual_view"])
    return {"batch": batch, "queue_size": queue_size, "one_way_s": one, "dual_view_s": dual,
            "added_per_view_share": (dual - one) / one}


def _default_step_fn(cfg: TrainConfig, precision: str, memory_format: str) -> Callable[[], None]:
    """One bare training step of ``cfg``'s model on random inputs [B, 1, 28, 28], as ``Engine.train_epoch`` runs it."""
    torch.manual_seed(0)
    layout = torch_memory_format(memory_format)
    model = build_model(cfg, 1).to(memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(1)
    x1, x2 = (torch.randn(cfg.batch_size, 1, 28, 28, generator=g).contiguous(memory_format=layout) for _ in range(2))
    ids = torch.arange(cfg.batch_size)
    device = torch.device("cpu")

    def step():
        with autocast(device, precision):
            loss = model(x1, x2, ids)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.momentum_update(cfg.momentum)

    return step


def bench_precision(repeats: int, epoch_steps: int, epoch_repeats: int) -> dict:
    """Part 4: bare steps in the four LAYOUTS, then ``epoch_repeats`` epochs of ``epoch_steps`` steps of the default
    config's Engine in fp32 and in auto (alternating); images per second, medians and ratios to fp32."""
    from bench.epoch_phases import warm_engines

    cfg = TrainConfig.from_yaml(DEFAULT_CONFIG)
    variants = {name: _default_step_fn(cfg, p, f) for name, p, f in LAYOUTS}
    # the same four with plain BatchNorm: what the default split BatchNorm (one call per sub-batch) costs each layout
    plain_bn = cfg.replace(bn_mode="none")
    variants.update({f"{name} {PLAIN_BN}": _default_step_fn(plain_bn, p, f) for name, p, f in LAYOUTS})
    with CpuShare(torch.get_num_threads()) as used:  # the share of the CPU these measurements got
        times = _alternating(variants, repeats, warmup=2)
        fp32 = statistics.median(times["fp32"])
        steps = {name: {**_summary(ts), "images_per_s": cfg.batch_size / statistics.median(ts),
                        "speedup_over_fp32": fp32 / statistics.median(ts)} for name, ts in times.items()}
        engines = warm_engines(epoch_steps)
        rates: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(epoch_repeats):
            for name, engine in engines.items():
                rates[name].append(engine.train_epoch()["images_per_s"])
    epochs = {name: {"images_per_s": statistics.median(r), "all": r} for name, r in rates.items()}
    auto, cpu = engines["auto"], torch.device("cpu")
    return {"config": str(DEFAULT_CONFIG.name), "batch": cfg.batch_size, "cpu_bf16_flags": cpu_bf16_flags(),
            "cpu_share": used.share,
            "auto_resolves_to": {"precision": resolve_precision("auto", cpu),
                                 "memory_format": resolve_memory_format("auto", cpu)},
            "bare_step": steps,
            "epoch": {"steps_per_epoch": epoch_steps, "repeats": epoch_repeats,
                      "auto_resolved": {"precision": auto.precision, "memory_format": auto.memory_format}, **epochs,
                      "speedup_auto_over_fp32": epochs["auto"]["images_per_s"] / epochs["fp32"]["images_per_s"]}}


#: part 5's strategies: name -> TrainConfig overrides (each strategy at its defaults)
NEGATIVE_VARIANTS = {"plain": {}, "top_rho=0.05": {"hard_negative_ratio": 0.05}, "hcl": {"negatives": "hcl"},
                     "ring": {"negatives": "ring"}, "mochi": {"negatives": "mochi"}}


def bench_negatives(repeats: int, queue_size: int = 16384) -> dict:
    """Part 5: bare steps of the default config (B = 256) with a full queue of ``queue_size`` random keys under each
    of NEGATIVE_VARIANTS, alternating; the loss path alone (fp32, B = 256, d = 128) likewise."""
    from moco.negatives import for_step

    cpu = torch.device("cpu")
    base = TrainConfig.from_yaml(DEFAULT_CONFIG).replace(queue_size=queue_size)
    precision = resolve_precision("auto", cpu)
    fns, paths = {}, {}
    for name, overrides in NEGATIVE_VARIANTS.items():
        cfg = base.replace(**overrides)
        torch.manual_seed(0)
        model = build_model(cfg, 1)
        with torch.no_grad():
            model.queue.enqueue(F.normalize(torch.randn(queue_size, cfg.feature_dim), dim=1),
                                torch.arange(queue_size) + 10**6)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.sgd_momentum)
        g = torch.Generator().manual_seed(1)
        x1, x2 = (torch.randn(cfg.batch_size, 1, 28, 28, generator=g) for _ in range(2))
        ids = torch.arange(cfg.batch_size)
        negatives = for_step(cfg, 0, 1, torch.Generator().manual_seed(2))

        def step(model=model, opt=opt, x1=x1, x2=x2, ids=ids, negatives=negatives):
            with autocast(cpu, precision):
                loss = model(x1, x2, ids, negatives=negatives)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.momentum_update(0.99)

        fns[name] = step
        q = F.normalize(torch.randn(cfg.batch_size, DIM, generator=g), dim=1).requires_grad_()
        k = F.normalize(torch.randn(cfg.batch_size, DIM, generator=g), dim=1)
        keys = F.normalize(torch.randn(queue_size, DIM, generator=g), dim=1)
        qids, kids = ids, torch.randint(0, 50000, (queue_size,), generator=g)

        def path(q=q, k=k, keys=keys, qids=qids, kids=kids, negatives=negatives):
            q.grad = None
            negatives.term(q, k, keys, 0.2, query_ids=qids, queue_ids=kids, threshold=1.0)[0].backward()

        paths[name] = path
    with CpuShare(torch.get_num_threads()) as used:
        steps = {name: statistics.median(ts) for name, ts in _alternating(fns, repeats, warmup=2).items()}
        losses = {name: statistics.median(ts) for name, ts in _alternating(paths, repeats, warmup=2).items()}
    plain = steps["plain"]
    return {"config": DEFAULT_CONFIG.name, "batch": base.batch_size, "queue_size": queue_size, "precision": precision,
            "repeats": repeats, "goal_added_share": 0.10, "cpu_share": used.share,
            "strategies": {name: {"overrides": NEGATIVE_VARIANTS[name], "step_s": steps[name],
                                  "added_share_of_plain_step": steps[name] / plain - 1.0,
                                  "loss_path_s": losses[name], "loss_path_added_s": losses[name] - losses["plain"]}
                           for name in NEGATIVE_VARIANTS}}


def _environment(command: str) -> dict:
    """The run's command, date, machine and versions; sets malloc as moco.engine.Engine does (moco/allocator.py)."""
    from moco.allocator import retain_freed_memory

    here = machine()
    return {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        **{key: here[key] for key in ("cpu", "cpu_id", "cpu_bf16_flags")},
                        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "malloc_retains_freed_memory": retain_freed_memory(),
                        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "torchvision": torchvision.__version__},
            "device": "cpu"}


def run(quick: bool = False, command: str = "python -m bench.step", parts: tuple[str, ...] = PARTS) -> dict:
    """Run the benchmarks of ``parts`` on the CPU; ``quick`` uses fewer repeats and sizes (a few minutes)."""
    repeats = 3 if quick else 7
    out = _environment(command)
    out["quick"] = quick
    if "precision" in parts:
        out["precision"] = {**bench_precision(repeats=5 if quick else 15, epoch_steps=10 if quick else 30,
                                              epoch_repeats=2 if quick else 7), "quick": quick, "command": command,
                            "date": out["date"], "machine": out["machine"]}
    if "negatives" in parts:
        out["negatives"] = {**bench_negatives(repeats=5 if quick else 15), "quick": quick, "command": command,
                            "date": out["date"], "machine": out["machine"]}
    if "lightly" in parts:  # part 6: bench/lightly_step.py
        from bench.lightly_step import bench_lightly

        out["lightly"] = {**bench_lightly(repeats=5 if quick else 15), "command": command, "date": out["date"],
                          "machine": out["machine"]}
    if "allocator" in parts:  # part 7: bench/allocator_step.py
        from bench.allocator_step import bench_allocator

        out["allocator"] = {**bench_allocator(steps=10 if quick else 30, epochs=2 if quick else 3,
                                              rounds=1 if quick else 2), "command": command, "date": out["date"],
                            "machine": out["machine"]}
    if "phases" in parts:  # part 8: bench/epoch_phases.py
        from bench.epoch_phases import bench_phases

        out["phases"] = {**bench_phases(steps=10 if quick else 30, epochs=2 if quick else 7), "quick": quick,
                         "command": command, "date": out["date"], "machine": out["machine"]}
    if "reference" not in parts:
        return out
    # the headline ratio: two near-identical steps, so it needs more repeats than the rest to rise above noise
    out["step_vs_reference"] = bench_step_vs_reference(batch=64, queue_size=4096, repeats=repeats if quick else 25)
    step64 = out["step_vs_reference"]["ours"]["median_s"]
    if quick:
        step256, how = 4 * step64, "extrapolated: 4 x the median B=64 step"
    else:
        step256, how = bench_resnet_step(256, repeats=3), "measured: median of 3 steps at B=256"
    out["resnet18_step_b256"] = {"seconds": step256, "how": how}
    sizes = [4096, 65536] if quick else [4096, 8192, 16384, 32768, 65536]
    out["selection_cost"] = bench_selection(256, sizes, repeats=5 if quick else 15, step_seconds=step256)
    out["dual_view"] = bench_dual_view(batch=64, queue_size=4096, repeats=repeats)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and queue sizes (~1-2 minutes)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON output (default {RESULTS})")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    parts = tuple(p for p in args.parts.split(",") if p)
    if not parts or set(parts) - set(PARTS):
        parser.error(f"--parts {args.parts!r} is not allowed: expected a comma-separated subset of {', '.join(PARTS)}")
    result = run(args.quick, command="python -m bench.step " + " ".join(argv if argv is not None else sys.argv[1:]),
                 parts=parts)
    if args.output.is_file():  # keep the other parts of the previous run, and other CPUs' precision parts
        result = step_page.merge_parts(json.loads(args.output.read_text()), result, parts)
    text = json.dumps(result, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
