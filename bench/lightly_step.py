"""Step benchmark, part 6: our MoCo v2 training step against lightly 1.6's, in the same run, fp32 and bf16.

Both steps train the same backbone (``moco.backbones.build_backbone`` with the default config's ConvNet, width 32) on
the same random inputs [B, 1, 28, 28], B = 256, with a 2-layer MLP head to 128 dimensions, a 4,096-key queue,
temperature 0.2, key-encoder momentum 0.99 and SGD (lr 0.06, momentum 0.9, weight decay 5e-4):

* **ours**: ``moco.model.MoCo`` with ``bn_mode: none`` (lightly has no split BatchNorm; the default config's split BN
  is timed as a third variant), one-way (lambda = 1, rho = 1, delta = 1: plain MoCo v2);
* **lightly**: its documented MoCo recipe: ``MoCoProjectionHead``, ``NTXentLoss(memory_bank_size=(4096, 128))``
  and ``update_momentum`` on deep-copied backbone and head.

A step is: momentum update, query forward and backward, key forward, SGD. Under ``bf16`` both run their forward
passes under the same CPU autocast (``moco.precision.autocast``); lightly's loss then sees bf16 embeddings, ours casts
them to fp32 before the logits. Steps alternate between the variants so that load drift hits all alike; the figures
are medians (and minimums, steadier on a shared machine). lightly is a dev-only dependency of this benchmark
(``pip install -e .[bench]``); without it the part reports that it was skipped.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

BATCH, QUEUE, DIM, HIDDEN, TAU, MOMENTUM = 256, 4096, 128, 256, 0.2, 0.99
VARIANTS = ("ours", "ours (split BN, the default config)", "lightly 1.6")


def _lightly_step(backbone: nn.Module, feat_dim: int, x1: torch.Tensor, x2: torch.Tensor,
                  precision: str) -> Callable[[], None]:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    from moco.precision import autocast

    head = MoCoProjectionHead(feat_dim, HIDDEN, DIM)
    backbone_m, head_m = copy.deepcopy(backbone), copy.deepcopy(head)
    deactivate_requires_grad(backbone_m)
    deactivate_requires_grad(head_m)
    criterion = NTXentLoss(temperature=TAU, memory_bank_size=(QUEUE, DIM))
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.06, momentum=0.9, weight_decay=5e-4)
    cpu = torch.device("cpu")

    def step() -> None:
        update_momentum(backbone, backbone_m, m=MOMENTUM)
        update_momentum(head, head_m, m=MOMENTUM)
        with autocast(cpu, precision):
            query = head(backbone(x1).flatten(start_dim=1))
            with torch.no_grad():
                key = head_m(backbone_m(x2).flatten(start_dim=1)).detach()
            loss = criterion(query, key)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _our_step(bn_mode: str, x1: torch.Tensor, x2: torch.Tensor, precision: str) -> Callable[[], None]:
    from moco.backbones import build_backbone
    from moco.model import MoCo
    from moco.precision import autocast

    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("convnet", 1, width=32, norm="batch")
    model = MoCo(backbone, feat_dim, dim=DIM, mlp_hidden=HIDDEN, queue_size=QUEUE, temperature=TAU,
                 dual_view_weight=1.0, bn_mode=bn_mode, bn_splits=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    ids, cpu = torch.arange(len(x1)), torch.device("cpu")

    def step() -> None:
        model.momentum_update(MOMENTUM)
        with autocast(cpu, precision):
            loss = model(x1, x2, ids)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _steps(precision: str) -> dict[str, Callable[[], None]]:
    from moco.backbones import build_backbone

    g = torch.Generator().manual_seed(1)
    x1, x2 = (torch.randn(BATCH, 1, 28, 28, generator=g) for _ in range(2))
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("convnet", 1, width=32, norm="batch")
    return {"ours": _our_step("none", x1, x2, precision),
            "ours (split BN, the default config)": _our_step("split", x1, x2, precision),
            "lightly 1.6": _lightly_step(backbone, feat_dim, x1, x2, precision)}


def bench_lightly(repeats: int, precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict[str, Any]:
    """Images per second of each variant in each precision (alternating steps), and ours / lightly."""
    try:
        import lightly
    except ImportError:
        return {"skipped": "lightly is not installed (pip install -e .[bench])"}
    out: dict[str, Any] = {"lightly_version": lightly.__version__, "batch": BATCH, "queue": QUEUE,
                           "repeats": repeats, "precisions": {}}
    for precision in precisions:
        fns = _steps(precision)
        for fn in fns.values():  # warm-up (and fill the queues / memory banks a little)
            fn()
            fn()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        rows = {name: {"median_s": statistics.median(ts), "min_s": min(ts),
                       "images_per_s": BATCH / statistics.median(ts)} for name, ts in times.items()}
        lightly_median = rows["lightly 1.6"]["median_s"]
        for row in rows.values():
            row["speed_vs_lightly"] = lightly_median / row["median_s"]
        out["precisions"][precision] = rows
    return out


def render(r: dict[str, Any]) -> list[str]:
    """The page's lines for this part."""
    if r.get("skipped"):
        return [f"Against lightly: skipped ({r['skipped']}).", ""]
    machine = r.get("machine") or {}
    load = machine.get("load_average_at_start")
    out = [f"Against lightly {r['lightly_version']} (part 6; `{r.get('command')}`, {r.get('date')}; same ConvNet width "
           f"32, B = {r['batch']}, K = {r['queue']}, {r['repeats']} alternating steps"
           + (f"; load average at start {load[0]:.1f} on {machine.get('cpu_count')} cores" if load else "")
           + "; speed relative to lightly's step, > 1 is faster):", "",
           "| step | " + " | ".join(f"{p} images/s (x lightly)" for p in r["precisions"]) + " |",
           "|---|" + "---|" * len(r["precisions"])]
    for name in VARIANTS:
        cells = [f"{rows[name]['images_per_s']:,.0f} ({rows[name]['speed_vs_lightly']:.2f}x)"
                 for rows in r["precisions"].values()]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out + [""]
