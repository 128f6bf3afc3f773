"""Fault-injection run: a mini study per fault, and what survived.

    python bench/faults.py [--only NAME[,NAME]] [--results-dir bench/results]

Each scenario runs the mini study (configs/smoke/mini.yaml: digits, 4 trials, compute 4, ASHA) through
``study/run.py`` while injecting one fault for real, resumes it with ``--resume`` where the fault stops the driver,
and then checks the study's files. It prints one row per fault and the totals: faults injected, faults survived,
trials planned, trials completed, results lost (a trial that had finished before the fault and whose result is
missing or different afterwards). Results go to ``bench/results/faults.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Context, loadavg, run_record, write_json  # noqa: E402
from bench.page import Goal  # noqa: E402
from study.processes import train_workers, wait_until  # noqa: E402
from study.results import collect, finished_trials  # noqa: E402
from study.space import load_space  # noqa: E402

MINI = ROOT / "configs" / "smoke" / "mini.yaml"
DIVERGE = ROOT / "configs" / "smoke" / "diverge.yaml"
TITLE = "10. Fault injection"
COMMAND = "python bench/faults.py"  #: not run by bench/run.py (a dozen mini studies): run it on its own


def _study(storage: Path, name: str, space: Path = MINI, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "study" / "run.py"), "--space", str(space), "--storage", str(storage),
            "--name", name, "--no-report", "--max-concurrent", "1", *extra]


def _snapshot(run_dir: Path, space) -> dict[str, tuple]:
    """Results of the trials finished so far: trial id -> (status, epochs, metric)."""
    done = finished_trials(run_dir)
    trials, _ = collect(run_dir, space)
    return {str(r.trial_id): (r.status, int(r.epochs),
                              round(float(r.val_knn_top1), 6) if r.val_knn_top1 == r.val_knn_top1 else None)
            for r in trials.itertuples() if str(r.trial_id) in done}


def run_scenario(name: str, work: Path) -> dict:
    """Run one fault scenario; return what was injected, whether the study survived and what was lost."""
    storage = work / name
    space_path = DIVERGE if name == "diverging_trial" else MINI
    space = load_space(str(space_path))
    cmd = _study(storage, "study", space_path)
    run_dir = storage / "study"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if name in ("worker_raises", "worker_exits"):
        env["MOCO_FAULT"] = f"epoch=2,kind={'raise' if name == 'worker_raises' else 'exit'}"
    injected, before, needs_resume = 0, {}, False
    started = time.time()
    with open(work / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if name == "worker_killed":
                if wait_until(lambda: (run_dir / "results.jsonl").is_file() and train_workers(proc.pid), proc):
                    train_workers(proc.pid)[0].kill()
                    injected = 1
            elif name in ("driver_sigterm", "driver_sigkill"):
                if wait_until(lambda: len(finished_trials(run_dir)) >= 1, proc):
                    before = _snapshot(run_dir, space)
                    if name == "driver_sigterm":
                        proc.send_signal(signal.SIGTERM)
                    else:
                        os.killpg(proc.pid, signal.SIGKILL)
                    injected, needs_resume = 1, True
            proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if needs_resume:
            time.sleep(5)
            resumed = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     timeout=900)
            returncode = resumed.returncode
        else:
            returncode = proc.returncode
    if name in ("worker_raises", "worker_exits"):
        injected = sum(1 for d in (run_dir / "train").glob("*/.fault-injected-epoch2"))
    trials, _ = collect(run_dir, space) if (run_dir / "trial_status.json").is_file() else (None, None)
    after = _snapshot(run_dir, space) if trials is not None else {}
    lost = sum(1 for trial_id, result in before.items() if after.get(trial_id) != result)
    ok_status = {"completed", "pruned", "diverged"} if name == "diverging_trial" else {"completed", "pruned"}
    completed = 0 if trials is None else int(trials.status.isin(ok_status).sum())
    if name == "diverging_trial":
        injected = 0 if trials is None else int((trials.status == "diverged").sum())
    survived = returncode == 0 and completed == space.num_trials and lost == 0 and injected > 0
    return {"fault": name, "injected": injected, "survived": survived, "exit_status": returncode,
            "trials_planned": space.num_trials, "trials_completed": completed, "results_lost": lost,
            "wall_s": round(time.time() - started, 1), "log": str(work / f"{name}.log")}


SCENARIOS = ("worker_raises", "worker_exits", "worker_killed", "driver_sigterm", "driver_sigkill", "diverging_trial")


def run(ctx: Context, names: list[str] | tuple[str, ...] = SCENARIOS) -> dict:
    """Every scenario of ``names`` in turn: one row each, and the totals."""
    work = Path(tempfile.mkdtemp(prefix="mocostudy-faults-"))
    rows = []
    for name in names:
        print(f"[faults] {name} ...", flush=True)
        rows.append(run_scenario(name, work))
        print(f"[faults] {json.dumps(rows[-1])}", flush=True)
    totals = {"faults_injected": sum(r["injected"] > 0 for r in rows),
              "faults_survived": sum(r["survived"] for r in rows),
              "trials_planned": sum(r["trials_planned"] for r in rows),
              "trials_completed": sum(r["trials_completed"] for r in rows),
              "results_lost": sum(r["results_lost"] for r in rows)}
    return {"scenarios": rows, "totals": totals}


def all_survived(r: dict) -> bool:
    return r["totals"]["faults_survived"] == len(r["scenarios"]) and r["totals"]["results_lost"] == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    doc = run_record("faults", False, " ".join([COMMAND, *(argv if argv is not None else sys.argv[1:])]))
    result = run(Context(), args.only.split(",") if args.only else SCENARIOS)
    rows, totals = result["scenarios"], result["totals"]
    print(f"{'fault':<18}{'injected':>9}{'survived':>9}{'planned':>8}{'completed':>10}{'lost':>6}{'wall s':>8}")
    for r in rows:
        print(f"{r['fault']:<18}{r['injected']:>9}{str(r['survived']):>9}{r['trials_planned']:>8}"
              f"{r['trials_completed']:>10}{r['results_lost']:>6}{r['wall_s']:>8}")
    print("totals: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in totals.items()))
    write_json(Path(args.results_dir) / "faults.json", {**doc, "result": result, "load_after": loadavg()})
    return 0 if all_survived(result) else 1


# --- the page -----------------------------------------------------------------------------------------------------
def render(r: dict, figs: Path) -> list[str]:
    """One row per fault: injected for real, survived (the study finished every trial, nothing lost)."""
    out = ["Each fault is injected for real into a mini study (`configs/smoke/mini.yaml`: digits, 4 trials; the "
           "diverging trial: `configs/smoke/diverge.yaml`) run by `study/run.py`, resumed with `--resume` where the "
           "fault stops the driver. A result is lost when a trial that had finished before the fault is missing or "
           "different afterwards.", "",
           "| fault | injected | survived | trials planned | trials completed | results lost | wall s |",
           "|---|---|---|---|---|---|---|"]
    for row in r["scenarios"]:
        out.append(f"| {row['fault']} | {row['injected']} | {'yes' if row['survived'] else '**no**'} | "
                   f"{row['trials_planned']} | {row['trials_completed']} | {row['results_lost']} | "
                   f"{row['wall_s']:.0f} |")
    out += ["", "Totals: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r["totals"].items()) + ".", ""]
    return out


def goals(r: dict) -> list[Goal]:
    t = r["totals"]
    return [("every injected fault survived, no finished result lost",
             f"{t['faults_survived']} of {len(r['scenarios'])} survived, {t['results_lost']} lost", all_survived(r))]


if __name__ == "__main__":
    sys.exit(main())
