"""Augmentation throughput: the batched on-device pipeline (moco.augment) vs torchvision per-sample transforms.

Workload: Fashion-MNIST training images (28x28x1), two augmented views per image (MoCo), batches of 256.

* ``batched``       -- :class:`moco.augment.Augment` on whole uint8 batches in the main process (torch threads = cores);
  ``batched_1_thread`` the same on one thread (robust when other processes share the cores).
* ``per_sample_pil`` -- the classic recipe: a Dataset returning two views of ``PIL.Image`` through
  ``torchvision.transforms.v2`` (crop, flip, jitter, blur, to-tensor, normalise), DataLoader with 2 workers.
* ``per_sample_tensor`` -- the same transforms v2 pipeline on per-image uint8 tensors, DataLoader with 2 workers.

Both sides use the same settings (moco.augment's grayscale defaults). The speed-up is the batched median over the
*faster* per-sample median. Also measured: the hand-written pipeline vs ``kornia.augmentation`` with the same steps
(ms per 256-image batch, one view) on 256x1x28x28 and 256x3x32x32 -- the reason moco.augment is hand-written.

Other processes on a shared CPU skew every figure (intra-op threads spin under oversubscription); the record keeps
the load average before and after -- rerun when it is well below the core count.

``python -m bench.augment [--quick]`` writes bench/results/augment.json. In quick mode it takes about a minute.
This file holds the benchmark's deliberate second copy of the pipeline (the torchvision and kornia references).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from bench.common import Context, loadavg, run_record, write_json
from bench.page import Goal, goal_sentence, num, spread
from moco.augment import GRAY_DEFAULTS, RGB_DEFAULTS, Augment

BATCH = 256
WORKERS = 2
RESULTS = Path(__file__).resolve().parent / "results" / "augment.json"
GOAL_SPEEDUP = 5.0  #: batched augmentation over the best per-sample DataLoader (medians)
TITLE = "2. Data path (augmentation)"


def _fashion_images(n: int) -> tuple[torch.Tensor, str]:
    from moco import data
    from moco.config import TrainConfig

    try:
        ds = data.load_dataset(TrainConfig(val_size=0))
        return ds.train.images[:n].contiguous(), "fashion_mnist"
    except data.DatasetNotFoundError:
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g), "random 28x28x1 (no data)"


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# --- torchvision per-sample reference -----------------------------------------------------------------------------
def _tv_pipeline(mean: float, std: float, pil: bool):
    from torchvision.transforms import v2

    p = GRAY_DEFAULTS
    bri, con = p["jitter"][:2]
    steps = [v2.PILToTensor()] if pil else []
    steps += [
        v2.RandomResizedCrop(28, scale=p["scale"], ratio=p["ratio"], antialias=True),
        v2.RandomHorizontalFlip(p["flip_p"]),
        v2.RandomApply([v2.ColorJitter(brightness=bri, contrast=con)], p=p["jitter_p"]),
        v2.RandomApply([v2.GaussianBlur(7, sigma=p["blur_sigma"])], p=p["blur_p"]),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([mean], [std]),
    ]
    return v2.Compose(steps)


class _TwoViews(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, transform: Callable, pil: bool):
        self.images, self.transform, self.pil = images, transform, pil

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = self.images[i]
        if self.pil:  # as torchvision.datasets.FashionMNIST does
            from PIL import Image

            img = Image.fromarray(img[0].numpy(), mode="L")
        return self.transform(img), self.transform(img)


def _per_sample_rate(images: torch.Tensor, pil: bool, repeats: int) -> list[float]:
    ds = _TwoViews(images, _tv_pipeline(0.286, 0.353, pil), pil)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                                         drop_last=True, persistent_workers=True, prefetch_factor=4)
    rates = []
    it = iter(loader)
    next(it)  # start the workers
    del it
    for _ in range(repeats):
        start, n = time.perf_counter(), 0
        for q, k in loader:
            n += q.shape[0]
        rates.append(n / (time.perf_counter() - start))
    return rates


def _batched_rate(images: torch.Tensor, repeats: int) -> list[float]:
    aug = Augment(28, 1, (0.286,), (0.353,))
    g = torch.Generator().manual_seed(0)
    aug(images[:BATCH], g)  # warm-up
    rates = []
    for _ in range(repeats):
        start, n = time.perf_counter(), 0
        perm = torch.randperm(len(images), generator=g)
        for i in range(0, len(images) - BATCH + 1, BATCH):
            x = images[perm[i:i + BATCH]]
            aug(x, g), aug(x, g)  # the two views of a step
            n += x.shape[0]
        rates.append(n / (time.perf_counter() - start))
    return rates


# --- kornia vs hand-written ---------------------------------------------------------------------------------------
def _kornia_pipeline(size: int, channels: int, mean, std):
    import kornia.augmentation as K

    p = GRAY_DEFAULTS if channels == 1 else RGB_DEFAULTS
    radius = max(1, min(int(-(-3 * p["blur_sigma"][1] // 1)), (size - 1) // 2))
    steps = [K.RandomResizedCrop((size, size), scale=p["scale"], ratio=p["ratio"]), K.RandomHorizontalFlip(p["flip_p"])]
    if channels == 1:
        steps.append(K.ColorJitter(*p["jitter"][:2], 0.0, 0.0, p=p["jitter_p"]))
    else:
        steps += [K.ColorJitter(*p["jitter"], p=p["jitter_p"]), K.RandomGrayscale(p=p["gray_p"])]
    steps += [K.RandomGaussianBlur(2 * radius + 1, p["blur_sigma"], p=p["blur_p"]),
              K.Normalize(torch.tensor(mean), torch.tensor(std))]
    return K.AugmentationSequential(*steps)


def _ms_per_batch(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, repeats: int, calls: int) -> list[float]:
    for _ in range(2):
        fn(x)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn(x)
        out.append((time.perf_counter() - start) / calls * 1e3)
    return out


def kornia_vs_handwritten(repeats: int = 5, calls: int = 10) -> dict[str, Any]:
    """ms per 256-image batch (one view), hand-written moco.augment vs kornia.augmentation with the same steps."""
    try:
        import kornia  # noqa: F401  (optional: not a project dependency)
    except ImportError:
        return {"skipped": "kornia is not installed"}
    out: dict[str, Any] = {}
    for c, s in ((1, 28), (3, 32)):
        x = torch.randint(0, 256, (BATCH, c, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        mean, std = [0.5] * c, [0.25] * c
        hand, g = Augment(s, c, mean, std), torch.Generator().manual_seed(0)
        korn = _kornia_pipeline(s, c, mean, std)
        h = _ms_per_batch(lambda b: hand(b, g), x, repeats, calls)
        k = _ms_per_batch(lambda b: korn(b.float().div(255)), x, repeats, calls)
        out[f"{BATCH}x{c}x{s}x{s}"] = {"handwritten_ms": _stats(h), "kornia_ms": _stats(k),
                                        "kornia_over_handwritten": statistics.median(k) / statistics.median(h)}
    return out


# --- entry points -------------------------------------------------------------------------------------------------
def run(ctx: Context) -> dict[str, Any]:
    """Measure everything; returns the JSON-ready record (images/s are images per second, two views each)."""
    quick = ctx.quick
    n, repeats = (2560, 3) if quick else (10240, 5)
    images, source = _fashion_images(n)
    batched = _batched_rate(images, repeats)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batched_1t = _batched_rate(images, repeats)
    finally:
        torch.set_num_threads(threads)
    pil = _per_sample_rate(images, pil=True, repeats=repeats)
    tensor = _per_sample_rate(images, pil=False, repeats=repeats)
    best_per_sample = max(statistics.median(pil), statistics.median(tensor))
    speedup = statistics.median(batched) / best_per_sample
    return {
        "workload": {"images": source, "images_per_repeat": len(images), "batch": BATCH, "views": 2,
                     "per_sample_workers": WORKERS, "settings": {k: list(v) if isinstance(v, tuple) else v
                                                                 for k, v in GRAY_DEFAULTS.items()}},
        "repeats": repeats,
        "images_per_s": {"batched": _stats(batched), "batched_1_thread": _stats(batched_1t),
                         "per_sample_pil": _stats(pil),
                         "per_sample_tensor": _stats(tensor)},
        "speedup_vs_best_per_sample": speedup,
        "speedup_1_thread_vs_best_per_sample": statistics.median(batched_1t) / best_per_sample,
        "goal_speedup": GOAL_SPEEDUP,
        "goal_met": speedup >= GOAL_SPEEDUP,
        "kornia_vs_handwritten": kornia_vs_handwritten(repeats=3 if quick else 5, calls=5 if quick else 10),
    }


# --- the page -----------------------------------------------------------------------------------------------------
def render(r: dict, figs: Path) -> list[str]:
    ips = r["images_per_s"]
    out = [f"{r['workload']['images_per_repeat']} Fashion-MNIST images per repetition, batch "
           f"{r['workload']['batch']}, {r['workload']['views']} views; images/s.", "",
           "| pipeline | images/s: min / **median** / max |", "|---|---|"]
    for name, st in ips.items():
        out.append(f"| {name} | {spread({**st, 'n': r['repeats']}, 0)} |")
    sp, goal = r.get("speedup_vs_best_per_sample"), r.get("goal_speedup", GOAL_SPEEDUP)
    out += ["", f"Speed-up of the batched path over the best per-sample DataLoader (medians): {num(sp, 2)}x; "
            f"single-threaded batched path: {num(r.get('speedup_1_thread_vs_best_per_sample'), 1)}x. "
            + goal_sentence(r.get("goal_met"), f"{goal:g}x")
            + ("" if r.get("goal_met") or sp is None else f" ({sp / goal:.0%} of the goal)"), ""]
    return out + _render_kornia(r)


def _render_kornia(r: dict) -> list[str]:
    """Why moco.augment is hand-written: its pipeline vs kornia.augmentation with the same steps (as many
    repetitions as the rest of the benchmark)."""
    rows = {batch: row for batch, row in (r.get("kornia_vs_handwritten") or {}).items() if isinstance(row, dict)}
    if not rows:
        return []
    out = [f"The hand-written pipeline vs `kornia.augmentation` with the same steps (one view of a {BATCH}-image "
           "batch, ms per batch; why `moco/augment.py` is hand-written):", "",
           "| batch | hand-written (ms) | kornia (ms) | kornia / hand-written (medians) |", "|---|---|---|---|"]
    for batch, row in rows.items():
        hand, korn = ({**row[key], "n": r["repeats"]} for key in ("handwritten_ms", "kornia_ms"))
        out.append(f"| {batch.replace('x', ' x ')} | {spread(hand, 1)} | {spread(korn, 1)} | "
                   f"{num(row['kornia_over_handwritten'], 1)}x |")
    return out + [""]


def goals(r: dict) -> list[Goal]:
    return [(f"batched augmentation >= {r.get('goal_speedup', GOAL_SPEEDUP):g}x the torchvision DataLoader",
             f"{num(r.get('speedup_vs_best_per_sample'))}x", r.get("goal_met"))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats (about a minute)")
    parser.add_argument("--out", default=str(RESULTS), help="where to write the JSON record")
    args = parser.parse_args(argv)
    record = run_record("augment", args.quick, " ".join(["python -m bench.augment",
                                                          *(argv if argv is not None else sys.argv[1:])]))
    result = run(Context(quick=args.quick))
    write_json(Path(args.out), {**record, "result": result, "load_after": loadavg()})
    print(json.dumps({k: result[k] for k in ("images_per_s", "speedup_vs_best_per_sample", "kornia_vs_handwritten")},
                     indent=2))


if __name__ == "__main__":
    main()
