"""The benchmark runner produces a well-formed result file and page (benchmarks themselves never run in tests).

Runs ``bench/run.py --quick --only memory`` (the cheapest benchmark: one short training process, no Ray) with the
results and the page redirected into ``tmp_path``, so the committed files are untouched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import Context

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.timeout(120)
def test_quick_memory_benchmark_writes_result_and_page(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "docs" / "benchmarks.md"
    committed = ROOT / "docs" / "benchmarks.md"
    before = committed.stat().st_mtime if committed.exists() else None
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "memory",
                           "--results-dir", str(results), "--docs", str(docs), "--workdir", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    assert sorted(p.name for p in results.iterdir()) == ["memory.json"]
    doc = json.loads((results / "memory.json").read_text())
    for key in ("benchmark", "mode", "command", "date", "machine", "versions", "git", "load_before", "load_after",
                "elapsed_s", "result"):
        assert key in doc, key
    assert doc["benchmark"] == "memory" and doc["mode"] == "quick" and "--quick" in doc["command"]
    assert len(doc["load_before"]) == 3 and len(doc["load_after"]) == 3
    result = doc["result"]
    queue = result["queue_65536"]
    assert queue["analytic_mib"] == pytest.approx(65536 * (128 * 4 + 16) / 2**20)
    assert queue["measured_buffers_mib"] == pytest.approx(queue["analytic_mib"], rel=1e-3)
    assert result["engine_process"]["peak_mib"] > result["engine_process"]["after_imports_mib"] > 0

    page = docs.read_text()
    assert page.startswith("# Benchmarks")
    assert "## 7. Memory" in page and "Mode: **quick**" in page
    assert "Key queue at K = 65536" in page
    assert "## Machine and versions" in page
    assert "*Not run yet: `python bench/run.py --only efficiency`.*" in page  # other benchmarks: placeholders
    if before is not None:
        assert committed.stat().st_mtime == before


def _study(seed: int, bests: list[float]) -> dict:
    """A finished study record as bench/efficiency.py keeps it: best-so-far after each trial-epoch."""
    points, best = [], float("-inf")
    for i, value in enumerate(bests, 1):
        best = max(best, value)
        points.append({"trial_epochs": i, "wall_s": 10.0 * i, "best": best})
    return {"seed": seed, "points": points, "best": best, "wall_s": 10.0 * len(bests), "reports": len(bests)}


def test_efficiency_summary_of_a_partial_run_defers_the_goal(tmp_path):
    from bench import efficiency

    studies = {"tpe_asha": [_study(0, [60, 70, 80])], "random": [_study(0, [50, 60, 70, 79.6, 81])], "grid": []}
    partial = efficiency.summarize(studies, quick=False)
    assert partial["partial"] and partial["studies_done"] == 2 and partial["studies_planned"] == 9
    assert partial["target"] == pytest.approx(80.5)
    assert partial["summary"]["random"]["trial_epochs_to_target"]["median"] == 5
    assert partial["summary"]["tpe_asha"]["reached"] == 0  # 80 < 80.5: counted at its whole budget, 3
    assert partial["tpe_over_random_trial_epochs"] == pytest.approx(3 / 5)
    assert partial["goal_met"] is None  # judged on the complete run only

    from bench import run  # the page shows the partial result as such
    from bench.common import write_json

    write_json(tmp_path / "results" / "efficiency.json",
               {"mode": "full", "command": "c", "date": "d", "result": partial})
    page = run.write_page(tmp_path / "results", tmp_path / "docs" / "benchmarks.md").read_text()
    assert "**Partial run: 2 of 9 studies finished**" in page and "not judged: partial run, 2 of 9 studies" in page
    assert (tmp_path / "docs" / "figures" / "efficiency.png").is_file()

    done = {name: [_study(s, [70, 81]) for s in range(3)] for name in efficiency.SEARCHERS}
    done["random"] = [_study(s, [60, 65, 70, 75, 81]) for s in range(3)]
    complete = efficiency.summarize(done, quick=False)
    assert not complete["partial"]
    assert complete["tpe_over_random_trial_epochs"] == pytest.approx(2 / 5) and complete["goal_met"] is False

    done["random"][0] = _study(0, [60, 65, 70, 75, 79])  # never within 0.5 of 81: counted at its whole budget
    write_json(tmp_path / "results" / "efficiency.json",
               {"mode": "full", "command": "c", "date": "d", "result": efficiency.summarize(done, quick=False)})
    page = run.write_page(tmp_path / "results", tmp_path / "docs" / "benchmarks.md").read_text()
    assert "Goal: <= 1/3 (0.333): **MISSED** (by 0.067: 1.20x the allowed compute)." in page
    assert "Random search missed the target in 1 of 3 studies" in page  # so the ratio is an upper bound
    assert "0.400 of random's trial-epochs (at most: random missed the target in 1 of 3 studies)" in page

    done["random"] = [_study(s, [60, 65, 70, 75, 76, 77, 81]) for s in range(3)]  # ratio 2/7 <= 1/3, but ...
    done["tpe_asha"][2] = _study(2, [70, 72])  # ... one TPE + ASHA study never reaches the target
    write_json(tmp_path / "results" / "efficiency.json",
               {"mode": "full", "command": "c", "date": "d", "result": efficiency.summarize(done, quick=False)})
    page = run.write_page(tmp_path / "results", tmp_path / "docs" / "benchmarks.md").read_text()
    assert "**MISSED** (TPE + ASHA reached the target in 2 of 3 studies)." in page


def test_efficiency_resume_keeps_only_studies_of_the_same_setup(monkeypatch, tmp_path):
    from bench import efficiency

    previous = efficiency.summarize({"tpe_asha": [_study(0, [70])], "random": [], "grid": []}, quick=False)
    previous = json.loads(json.dumps(previous))  # as read back from the result file
    assert [r["seed"] for r in efficiency.reusable_studies(previous, quick=False)["tpe_asha"]] == [0]
    assert efficiency.reusable_studies(previous, quick=True) == {}  # another setup: nothing kept
    assert efficiency.reusable_studies(None, quick=False) == {}

    ran = []

    def fake_study(space, storage, name, **kwargs):  # no Ray: record which studies would run
        ran.append(name)
        raise KeyboardInterrupt  # stop at the first study that is not kept

    monkeypatch.setattr(efficiency, "run_study", fake_study)
    with pytest.raises(KeyboardInterrupt):
        efficiency.run(Context(workdir=tmp_path, previous=previous))
    assert ran == ["random-seed0"]  # tpe_asha seed 0 was kept


def test_bench_resume_refuses_changed_or_uncommitted_code(monkeypatch):
    from bench import run

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    doc = {"mode": "full", "date": "d", "command": "c", "git": {"commit": head}, "code_committed": True,
           "result": {"partial": True, "studies_done": 1, "studies_planned": 9}}
    assert run.previous_partial("efficiency", {**doc, "result": {"partial": False}}, "full") is None
    assert run.previous_partial("efficiency", doc, "quick") is None
    assert run.previous_partial("efficiency", {**doc, "code_committed": False}, "full") is None
    assert run.previous_partial("quality", doc, "full") is None  # not a resumable benchmark
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=ROOT, capture_output=True,
                           text=True).stdout.split()[0]
    assert run.previous_partial("efficiency", {**doc, "git": {"commit": first}}, "full") is None  # code changed since

    def fake_git(*args: str, dirty: bool) -> tuple[int, str]:  # the tree as git would report it, clean or not
        if args[0] == "status":
            return 0, " M bench/efficiency.py" if dirty else ""
        return (0, "") if args[:2] == ("diff", "--quiet") and args[2] == head else (1, "")

    monkeypatch.setattr(run, "git", lambda *args: fake_git(*args, dirty=True))
    assert not run.code_committed("efficiency")
    assert run.previous_partial("efficiency", dict(doc), "full") is None  # uncommitted changes in the code it runs
    monkeypatch.setattr(run, "git", lambda *args: fake_git(*args, dirty=False))
    assert run.code_committed("efficiency")
    resumed = run.previous_partial("efficiency", json.loads(json.dumps(doc)), "full")
    assert resumed["studies_done"] == 1 and resumed["resumed_from"]["commit"] == head


def _tune_run(run_dir: Path, trials: dict[str, int], epoch_s: float = 10.0, startup_s: float = 5.0) -> Path:
    """A study directory as Tune writes it: one ``result.json`` line per epoch report of each trial."""
    for trial, epochs in trials.items():
        (run_dir / trial).mkdir(parents=True)
        rows = [{"trial_id": trial, "epoch": e, "epoch_s": epoch_s, "time_total_s": startup_s + e * (epoch_s + 1),
                 "timestamp": 1000 + e, "val_knn_top1": 50.0 + e} for e in range(1, epochs + 1)]
        (run_dir / trial / "result.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return run_dir


def test_overhead_reuses_the_saved_efficiency_studies(tmp_path):
    from bench import overhead
    from bench.common import saved_result, write_json

    tpe = _tune_run(tmp_path / "tpe", {"a": 2, "b": 4})
    rnd = _tune_run(tmp_path / "random", {"a": 4, "b": 4})
    studies = {"tpe_asha": [{"run_dir": str(tpe), "wall_s": 100.0, "command": "tpe"}],
               "random": [{"run_dir": str(rnd), "wall_s": 160.0, "command": "random"}], "grid": []}
    write_json(tmp_path / "results" / "efficiency.json", {"mode": "full", "date": "d", "result": {"studies": studies}})
    out = overhead.run(Context(workdir=tmp_path / "work", results_dir=tmp_path / "results"))
    assert "bench/results/efficiency.json" in out["source"] and out["study_command"] == "tpe"
    assert out["inside_epochs_s"] == 60 and out["share_of_study_time"] == pytest.approx(0.6)
    assert out["startup_s_per_trial"]["median"] == pytest.approx(5.0)  # first report - epoch - between-epoch time
    other = out["without_early_stopping"]
    assert other["trial_epochs"] == 8 and other["share_of_study_time"] == pytest.approx(0.5)
    assert saved_result(tmp_path / "results", "efficiency", quick=True) is None  # another mode: not reused
    assert saved_result(tmp_path / "results", "efficiency")["quick"] is False  # the mode comes from the file


def test_every_benchmark_has_the_interface():
    from bench import run

    titles = set()
    for name in run.REGISTRY:
        module = run.benchmark(name)
        assert isinstance(module.TITLE, str) and module.TITLE not in titles, name
        titles.add(module.TITLE)
        for attr in ("run", "render", "goals"):
            assert callable(getattr(module, attr)), (name, attr)


def test_the_committed_page_renders_from_the_committed_results(tmp_path):
    from bench import run

    page = run.write_page(ROOT / "bench" / "results", tmp_path / "benchmarks.md")
    assert page.read_text() == (ROOT / "docs" / "benchmarks.md").read_text()
