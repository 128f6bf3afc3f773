"""Fault-injection run: a mini study per fault, and what survived.

    python bench/faults.py [--only NAME[,NAME]] [--results-dir bench/results]

Each scenario runs the mini study (tests/study/spaces/mini.yaml: digits, 4 trials, 3 epochs, ASHA) through
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

from bench.common import environment, write_json  # noqa: E402
from study.results import collect, finished_trials  # noqa: E402
from study.space import load_space  # noqa: E402

MINI = ROOT / "tests" / "study" / "spaces" / "mini.yaml"
DIVERGE = ROOT / "tests" / "study" / "spaces" / "diverge.yaml"


def _study(storage: Path, name: str, space: Path = MINI, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "study" / "run.py"), "--space", str(space), "--storage", str(storage),
            "--name", name, "--no-report", "--max-concurrent", "1", *extra]


def train_workers(pid: int):
    """The Ray Train worker processes below ``pid`` (a study's driver)."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            if "RayTrainWorker" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.Error:
            continue
    return out


def wait_until(predicate, proc: subprocess.Popen, timeout: float = 400) -> bool:
    """Poll ``predicate`` until it holds (True), ``proc`` ends or ``timeout`` seconds pass (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.5)
    return False


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--results-dir", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCENARIOS)
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
    print(f"{'fault':<18}{'injected':>9}{'survived':>9}{'planned':>8}{'completed':>10}{'lost':>6}{'wall s':>8}")
    for r in rows:
        print(f"{r['fault']:<18}{r['injected']:>9}{str(r['survived']):>9}{r['trials_planned']:>8}"
              f"{r['trials_completed']:>10}{r['results_lost']:>6}{r['wall_s']:>8}")
    print("totals: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in totals.items()))
    write_json(Path(args.results_dir) / "faults.json", {
        "benchmark": "faults", "command": " ".join([sys.executable, *sys.argv]), **environment(),
        "scenarios": rows, "totals": totals})
    return 0 if totals["faults_survived"] == len(rows) and totals["results_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
