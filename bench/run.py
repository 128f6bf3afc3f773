"""Run the benchmark suite and write ``docs/benchmarks.md`` with its figures.

    python bench/run.py [--quick] [--only NAME[,NAME]] [--results-dir DIR] [--docs FILE] [--render-only]
                     [--resume]

Benchmarks (in this order; each writes ``<results-dir>/<name>.json``):

  step        training step vs the reference MoCo v2 step, dual-view cost, selection cost (bench/step.py)
  augment     batched augmentation vs a torchvision DataLoader (bench/augment.py)
  efficiency  Optuna TPE + ASHA vs random search: best endpoint at fixed compute, and compute to the target
  overhead    Ray overhead: share of a study's time inside training epochs, start-up per trial
  scaling     1 vs 2 Ray Train workers, 1 vs 2 concurrent trials, as efficiency against linear
  quality     kNN / linear probe of the baseline and of the study's best vs raw pixels; training throughput
  memory      peak memory of the study's processes, of one training process and of the K = 65536 queue
  longrun     the default Fashion-MNIST config after 10 and after 50 epochs vs raw pixels (bench/longrun.py)
  precision   the default config in fp32 and in bf16, paired by seed: kNN and linear probe (bench/precision.py)
  study_wall  the default study's search in fp32 and in precision auto, one after the other (bench/study_wall.py)
  encoder     the default study's metric for raw pixels, untrained and trained encoders, pooled to 1 or 2x2
              (bench/encoder.py)
  faults      faults injected into mini studies and what survived (bench/faults.py; on the page only, run it with
              ``python bench/faults.py``)

Every benchmark is a module with the same interface: ``TITLE`` (its section title), ``run(ctx: Context) -> dict``,
``render(result, figs) -> list[str]`` (its section's lines) and ``goals(result) -> list[(goal, measured, met)]``
(its rows of the summary table); ``REGISTRY`` below names them in page order.

``--quick`` scales everything down to finish in about ten minutes on a 2-core CPU; the full run takes hours. The
page is rebuilt from every result file present, and every table says which mode and command produced it, so
``--only`` refreshes some results and keeps the others; a result measured on another CPU is kept beside the new one
as ``<name>@<cpu>.json`` and shown after it. The efficiency benchmark (ten default-size studies, about 4 h
here: 23 and 18 min for a TPE and a random study on the AMX Xeon) saves its result after every study; ``--resume``
continues an interrupted run from that file, keeping its finished studies when the code they ran is unchanged and
committed.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import page  # noqa: E402
from bench.common import (DOCS, RESULTS_DIR, Context, git, keep_other_cpu, loadavg, read_json,  # noqa: E402
                          run_record, write_json)  # noqa: E402

#: name -> the module that implements the benchmark interface, in page order (modules import lazily: torch, Ray).
REGISTRY = {"step": "bench.step_page", "augment": "bench.augment", "efficiency": "bench.efficiency",
            "overhead": "bench.overhead", "scaling": "bench.scaling", "quality": "bench.quality",
            "memory": "bench.memory", "longrun": "bench.longrun", "precision": "bench.precision",
            "faults": "bench.faults", "study_wall": "bench.study_wall", "encoder": "bench.encoder"}
BENCHMARKS = tuple(name for name in REGISTRY if name != "faults")  # what bench/run.py runs (faults runs on its own)
RESUMABLE = {"efficiency": ("moco", "study", "configs", "bench/efficiency.py", "bench/common.py")}  # name -> code


def benchmark(name: str) -> Any:
    """The module of benchmark ``name``."""
    return importlib.import_module(REGISTRY[name])


def write_page(results_dir: Path, docs: Path) -> Path:
    """Rebuild the page from every result file in ``results_dir``."""
    return page.write_page(results_dir, docs, {name: benchmark(name) for name in REGISTRY})


def code_committed(name: str) -> bool:
    """Whether the code benchmark ``name`` runs has no uncommitted changes (the condition for resuming it later)."""
    status, changes = git("status", "--porcelain", "--", *RESUMABLE[name])
    return status == 0 and not changes


def previous_partial(name: str, doc: dict[str, Any] | None, mode: str) -> dict[str, Any] | None:
    """The partial result of an interrupted run of ``name`` to continue from, or None (printing why not).

    Kept only if it was run in the same mode by a commit whose code that the benchmark runs (``RESUMABLE[name]``)
    equals the working tree's, so resumed and new studies measure the same thing."""
    if name not in RESUMABLE or not doc or not (doc.get("result") or {}).get("partial"):
        return None
    commit = (doc.get("git") or {}).get("commit")
    why = None
    if doc.get("mode") != mode:
        why = f"it was a {doc.get('mode')} run"
    elif not commit or not doc.get("code_committed"):
        why = "its code was not all committed when it ran"
    elif git("diff", "--quiet", commit, "--", *RESUMABLE[name])[0] != 0 or not code_committed(name):
        why = f"the code it ran ({', '.join(RESUMABLE[name])}) changed since commit {commit[:10]}"
    if why:
        print(f"[bench] {name}: not resuming the interrupted run: {why}", flush=True)
        return None
    result = doc["result"]
    result["resumed_from"] = {"date": doc.get("date"), "command": doc.get("command"), "commit": commit}
    print(f"[bench] {name}: resuming the interrupted run of {doc.get('date')} (commit {commit[:10]}, "
          f"{result.get('studies_done')} of {result.get('studies_planned')} studies done)", flush=True)
    return result


def run_benchmark(name: str, args: argparse.Namespace, command: str, workdir: Path,
                  results: dict[str, Any]) -> bool:
    """Run one benchmark and write its result file; False if it failed."""
    path = args.results_dir / f"{name}.json"
    doc = run_record(name, args.quick, command)  # the git state first: the move below is not a change to the code
    previous = previous_partial(name, read_json(path), doc["mode"]) if args.resume else None
    if previous is None:  # an interrupted run is continued on whichever CPU (its parts record theirs)
        keep_other_cpu(path)
    if name in RESUMABLE:
        doc["code_committed"] = code_committed(name)
    if previous is not None:
        doc["resumed_from"] = previous["resumed_from"]

    def save(partial: dict[str, Any]) -> None:  # after each finished part; a later failure keeps it
        doc["result"] = partial
        write_json(path, doc)

    ctx = Context(quick=args.quick, workdir=workdir, results_dir=args.results_dir, results=results, command=command,
                  save=save, previous=previous)
    start, ok = time.perf_counter(), True
    try:
        result = benchmark(name).run(ctx)
        if isinstance(result, dict):
            result["quick"] = args.quick
        doc["result"] = results[name] = result
    except Exception as err:  # noqa: BLE001 - one failed benchmark must not lose the others
        traceback.print_exc()
        doc["error"], ok = f"{type(err).__name__}: {err}", False
    doc.update(load_after=loadavg(), elapsed_s=time.perf_counter() - start)
    write_json(path, doc)
    print(f"[bench] {name} done in {doc['elapsed_s']:.0f} s (load {doc['load_before']} -> {doc['load_after']})",
          flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="scaled-down run (about ten minutes on 2 CPU cores)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {','.join(BENCHMARKS)}")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where <name>.json are written")
    p.add_argument("--docs", type=Path, default=DOCS, help="the page to write (figures go to its figures/ folder)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder for studies (default: a temp dir)")
    p.add_argument("--render-only", action="store_true", help="rebuild the page from existing results only")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted efficiency benchmark: keep the studies its result file holds")
    args = p.parse_args(argv)
    names = list(BENCHMARKS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    given = argv if argv is not None else sys.argv[1:]
    command = "python bench/run.py" + (" " + shlex.join(given) if given else "")
    failed = []
    if not args.render_only:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mocostudy-bench-"))
        workdir.mkdir(parents=True, exist_ok=True)
        results: dict[str, Any] = {}
        for name in names:
            print(f"[bench] {name} ({'quick' if args.quick else 'full'}) ...", flush=True)
            if not run_benchmark(name, args, command, workdir, results):
                failed.append(name)
    docs = write_page(args.results_dir, args.docs)
    print(f"[bench] wrote {docs}")
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
