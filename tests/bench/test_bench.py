"""The benchmark runner produces a well-formed result file and page (benchmarks themselves never run in tests).

Runs ``bench/run.py --quick --only memory`` (the cheapest benchmark: one short training process, no Ray) with the
results and the page redirected into ``tmp_path``, so the committed files are untouched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.common import Context

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.timeout(330)  # a guard against hangs only, roomy for a loaded machine (the benchmark runs a short study)
def test_quick_memory_benchmark_writes_result_and_page(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "docs" / "benchmarks.md"
    committed = ROOT / "docs" / "benchmarks.md"
    before = committed.stat().st_mtime if committed.exists() else None
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "memory",
                           "--results-dir", str(results), "--docs", str(docs), "--workdir", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
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


def _study(seed: int, finals: list[float | None], per_trial: float = 4.0) -> dict:
    """A finished study record as bench/efficiency.py keeps it: trials one after another, each spending
    ``per_trial`` compute and ending with its full-validation value (None: pruned, no endpoint)."""
    from bench.efficiency import ENDPOINT, curve

    events, t = [], 0.0
    for i, value in enumerate(finals):
        for c in (per_trial / 2, per_trial):
            t += 1.0
            row = {"trial_id": f"t{i}", "compute": c, "timestamp": t}
            if c == per_trial and value is not None:
                row[ENDPOINT] = value
            events.append(row)
    points = curve(events, 0.0)
    return {"seed": seed, "points": points, "best": points[-1]["best"], "wall_s": t, "reports": len(events)}


def test_efficiency_curve_counts_study_compute_and_full_validation_endpoints():
    from bench.efficiency import DEFAULT_STUDY, ENDPOINT, best_within, compute_to_target, curve

    assert ENDPOINT == "final_" + DEFAULT_STUDY["metric"]  # the full-validation value of the study's metric
    monitor = DEFAULT_STUDY["metric"]
    events = [{"trial_id": "a", "compute": 2, monitor: 90.0, "timestamp": 1},  # a monitor value: not counted
              {"trial_id": "b", "compute": 2, "timestamp": 2},
              {"trial_id": "a", "compute": 4, ENDPOINT: 70.0, "timestamp": 3},
              {"trial_id": "b", "compute": 2, "timestamp": 4},  # a restart repeating its report: no new compute
              {"trial_id": "b", "compute": 4, ENDPOINT: 75.0, "timestamp": 5},
              {"trial_id": "c", "compute": 4, ENDPOINT: 99.0, "diverged": True, "timestamp": 6}]
    points = curve(events, 0.0)
    assert [p["compute"] for p in points] == [2, 4, 6, 6, 8, 12]
    assert [p["best"] for p in points] == [None, None, 70.0, 70.0, 75.0, 75.0]
    assert best_within(points, 5) is None and best_within(points, 6) == 70.0 and best_within(points, 100) == 75.0
    assert compute_to_target(points, 72.0) == 8 and compute_to_target(points, 80.0) is None


def test_efficiency_summary_at_budgets_with_undetermined_ratio(tmp_path):
    from bench import efficiency

    # TPE + ASHA: pruned trials (no endpoint) cost 2 each; random and grid: every trial completes its 4
    tpe = [_study(s, [None, 70, None, 81, None], per_trial=2.0) for s in range(5)]
    rnd = [_study(s, [60, 65, 70, 75, 81]) for s in range(5)]
    grid = [_study(s, [70, 80.5]) for s in range(5)]
    done = efficiency.summarize({"tpe_asha": tpe, "random": rnd, "grid": grid}, quick=False)
    assert not done["partial"] and done["target"] == pytest.approx(80.0)
    assert [b["compute"] for b in done["budgets"]] == [5.0, 10.0, 20.0]  # of random's total, 20
    at = {name: [a["mean"] for a in sm["at_budget"]] for name, sm in done["summary"].items()}
    assert at["tpe_asha"] == [70.0, 81.0, 81.0] and at["random"] == [60.0, 65.0, 81.0]
    assert at["grid"] == [70.0, 80.5, 80.5]
    assert done["summary"]["tpe_asha"]["compute_to_target"]["median"] == 8  # its 4th trial ends at 4 x 2
    assert done["tpe_over_random_compute"] == pytest.approx(8 / 20) and done["goal_met"] is False
    lo, hi = done["tpe_over_random_compute_ci"]
    assert lo == pytest.approx(0.4) and hi == pytest.approx(0.4)  # identical repetitions: no spread

    rnd[0] = _study(0, [60, 65, 70, 75, 79])  # one random study never within 1 point of 81
    undetermined = efficiency.summarize({"tpe_asha": tpe, "random": rnd, "grid": grid}, quick=False)
    assert undetermined["tpe_over_random_compute"] is None and undetermined["goal_met"] is None
    assert "random search reached the target in 4 of 5 studies" == undetermined["ratio_undetermined"]

    tpe[1] = _study(1, [None, None, None, None, 70], per_trial=2.0)  # a TPE study with nothing at 25 %
    missed = efficiency.summarize({"tpe_asha": tpe, "random": rnd, "grid": grid}, quick=False)
    first = missed["summary"]["tpe_asha"]["at_budget"][0]
    assert first["undetermined"] and first["mean"] is None and (first["n"], first["of"]) == (4, 5)
    assert missed["goal_met"] is False  # a TPE + ASHA study never reached the target

    from bench import run
    from bench.common import write_json

    write_json(tmp_path / "results" / "efficiency.json", {"mode": "full", "command": "c", "date": "d",
                                                          "result": undetermined})
    page = run.write_page(tmp_path / "results", tmp_path / "docs" / "benchmarks.md").read_text()
    assert "TPE + ASHA / random, compute to target: **undetermined** (random search reached the target in 4 of 5" \
        in page
    assert "| random | 4/5 | never, 20, 20, 20, 20 | undetermined |" in page
    assert (tmp_path / "docs" / "figures" / "efficiency.png").is_file()

    partial = efficiency.summarize({"tpe_asha": tpe[:1], "random": rnd[:1], "grid": []}, quick=False)
    assert partial["partial"] and partial["studies_done"] == 2 and partial["studies_planned"] == 10
    assert partial["goal_met"] is None
    write_json(tmp_path / "results" / "efficiency.json", {"mode": "full", "command": "c", "date": "d",
                                                          "result": partial})
    page = run.write_page(tmp_path / "results", tmp_path / "docs" / "benchmarks.md").read_text()
    assert "**Partial run: 2 of 10 studies finished**" in page and "not judged: partial run, 2 of 10" in page
    assert "resumed on other machines" not in page  # studies of one CPU (or of records that predate the field)

    tpe_xeon, rnd_epyc = {**tpe[0], "cpu": "Xeon, bf16 flags: amx_bf16"}, {**rnd[0], "cpu": "EPYC, bf16 flags: none"}
    spanned = efficiency.summarize({"tpe_asha": [tpe_xeon], "random": [rnd_epyc], "grid": []}, quick=False)
    write_json(tmp_path / "results" / "efficiency.json", {"mode": "full", "command": "c", "date": "d",
                                                          "result": spanned})
    page = run.write_page(tmp_path / "results", tmp_path / "docs" / "benchmarks.md").read_text()
    assert ("its studies ran on Xeon, bf16 flags: amx_bf16: tpe_asha seed 0; EPYC, bf16 flags: none: random seed 0."
            in page)


def test_efficiency_figure_names_the_runs_endpoint(monkeypatch, tmp_path):
    """The y axis says which endpoint was searched (it once said kNN on a run ranked by the probe)."""
    import matplotlib.axes

    from bench import efficiency

    labels, set_ylabel = [], matplotlib.axes.Axes.set_ylabel
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel",
                        lambda ax, text, *a, **k: (labels.append(text), set_ylabel(ax, text, *a, **k))[1])
    result = {"studies": {"random": [_study(0, [60, 70])]},
              "setup": {"endpoint": "final_val_probe_top1 (full validation split, at the end of each completed trial)"}}
    assert efficiency.figure(result, tmp_path / "f.png").is_file()
    assert labels == ["best final_val_probe_top1 so far (%)"]


def test_efficiency_resume_keeps_only_studies_of_the_same_setup(monkeypatch, tmp_path):
    from bench import efficiency

    previous = efficiency.summarize({"tpe_asha": [_study(0, [70.0])], "random": [], "grid": []}, quick=False)
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


def test_an_interrupted_run_resumes_on_another_cpu(monkeypatch, tmp_path):
    """--resume continues a partial result measured on another CPU (each of its parts records its own) instead of
    keeping it aside as <name>@<cpu>.json and starting again; without --resume it is kept aside."""
    from bench import common, run

    monkeypatch.setattr(common, "machine", lambda: {"cpu": "Intel(R) Xeon(R) Processor", "cpu_bf16_flags": []})
    monkeypatch.setattr(run, "previous_partial", lambda name, doc, mode: (
        {**doc["result"], "resumed_from": {}} if doc and doc["result"].get("partial") else None))
    seen = []
    monkeypatch.setattr(run, "benchmark", lambda name: SimpleNamespace(run=lambda ctx: seen.append(ctx.previous) or {}))
    partial = {"machine": {"cpu": "AMD EPYC", "cpu_bf16_flags": []}, "mode": "full", "result": {"partial": True}}
    common.write_json(tmp_path / "efficiency.json", partial)
    args = SimpleNamespace(results_dir=tmp_path, quick=False, resume=True)
    assert run.run_benchmark("efficiency", args, "c", tmp_path / "work", {})
    assert seen[-1]["partial"] and not list(tmp_path.glob("efficiency@*"))

    def fails_after_a_part(ctx):  # a part finished and saved, then the benchmark failed
        ctx.save({"partial": True, "studies_done": 1})
        raise RuntimeError("a later study failed")

    monkeypatch.setattr(run, "benchmark", lambda name: SimpleNamespace(run=fails_after_a_part))
    assert not run.run_benchmark("efficiency", args, "c", tmp_path / "work", {})
    failed = common.read_json(tmp_path / "efficiency.json")
    assert failed["result"]["studies_done"] == 1 and "a later study failed" in failed["error"]  # the part is kept

    monkeypatch.setattr(run, "benchmark", lambda name: SimpleNamespace(run=lambda ctx: seen.append(ctx.previous) or {}))
    common.write_json(tmp_path / "efficiency.json", partial)
    assert run.run_benchmark("efficiency", SimpleNamespace(**{**vars(args), "resume": False}), "c", tmp_path, {})
    assert seen[-1] is None and list(tmp_path.glob("efficiency@*")) == [tmp_path / "efficiency@amd-epyc.json"]


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


def test_overhead_accounts_the_trial_slots_with_the_workers_own_timers():
    from bench import overhead

    events = [{"epoch_s": 10.0, "monitor_s": 1.5, "startup_ray_s": 7.0, "startup_setup_s": 2.0},
              {"epoch_s": 10.0, "monitor_s": 0.5, "final_eval_s": 4.0}]
    parts = overhead.accounting(events, inside=20.0, slots_s=40.0)
    assert list(parts.values()) == [20.0, 2.0, 4.0, 7.0, 2.0, 5.0]  # the rest is what no timer covers
    assert overhead.accounting([{"epoch_s": 10.0}], inside=10.0, slots_s=40.0) is None  # results without timers


def test_study_wall_compares_epochs_by_kind_and_renders(tmp_path):
    from bench import study_wall

    sides = {}
    for side, (one_way_s, dual_s, precision) in {"auto": (6.0, 12.0, "bf16"), "fp32": (9.0, 18.0, "fp32")}.items():
        run_dir = tmp_path / side
        for trial, (views, epoch_s) in {"a": (1, one_way_s), "b": (2, dual_s)}.items():
            (run_dir / trial).mkdir(parents=True)
            rows = [{"trial_id": trial, "epoch": e, "compute": e * views, "epoch_s": epoch_s, "precision": precision,
                     "timestamp": e} for e in (1, 2)]
            (run_dir / trial / "result.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        sides[side] = study_wall.summarise(run_dir, wall_s=100.0 if side == "auto" else 130.0, command=side)
    assert sides["auto"]["epoch_s"]["dual-view"]["median"] == 12.0 and sides["auto"]["trial_epochs"] == 4
    assert sides["fp32"]["precision"] == ["fp32"] and sides["fp32"]["inside_epochs_s"] == 54.0
    result = {**sides, "fp32_over_auto": {"wall": 1.3, "inside_epochs": 1.5, "epoch_one-way": 1.5,
                                          "epoch_dual-view": 1.5}}
    text = "\n".join(study_wall.render(result, tmp_path))
    assert "`precision: auto` (bf16)" in text and "1.30x" in text


def test_memory_reports_two_trials_at_once_against_the_goal(tmp_path):
    from bench import memory

    study = {"source": "s", "mode": "full", "command": "c", "interval_s": 1.0, "samples": 3, "processes": 9,
             "peak_rss_mib_by_role": {}, "peak_total_pss_mib": 3000.0, "peak_total_rss_mib": 5000.0,
             "peak_total_anon_mib": 2900.0, "peak_total_pss_gib": 3000 / 1024, "goal_met": True}
    two = {"command": "study/run.py --num-samples 4 --cpus-per-worker 1", "wall_s": 190.0, "peak_total_pss_mib": 4454.0,
           "pss_mib_by_role_at_peak": {"train worker": 1956.0, "ray helper actor": 843.0},
           "peak_total_pss_gib": 4454 / 1024, "goal_met": False}
    result = {"study": study, "two_trials": two, "engine_process": {"train_subset": 1, "queue_size": 1, "width": 1,
              "peak_mib": 1.0, "after_imports_mib": 1.0, "after_data_mib": 1.0},
              "queue_65536": memory.queue_memory(1024, 8)}
    text = "\n".join(memory.render(result, tmp_path))
    assert "peak total 4,454 MiB PSS" in text or "peak total 4454 MiB PSS" in text
    assert "two 1-thread trials under 4 GiB in total: **MISSED**" in text
    assert [met for _, _, met in memory.goals(result)] == [True, False]


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


def test_tree_memory_counts_a_train_worker_first_seen_running_a_setup_function():
    from bench.common import TreeMemory

    # One process, titled as a Ray Train worker is while it runs a backend setup function, then as the worker.
    script = "sleep 1.5; exec -a ray::RayTrainWorker sleep 1.5"
    proc = subprocess.Popen(["bash", "-c", f"exec -a ray::execute._init_process_group bash -c '{script}'"])
    with TreeMemory(proc.pid, interval=0.2) as memory:
        proc.wait(timeout=30)
    roles = memory.summary()["peak_rss_mib_by_role"]
    assert roles["train worker"]["count"] == 1 and "ray helper actor" not in roles


def test_negatives_goal_is_judged_per_backbone_and_not_on_a_loaded_machine():
    from bench.step_page import _negatives

    def result(load: float, share: float | None = None) -> dict:
        rows = {"plain": (0.25, 0.0, 0.05, 0.0), "hcl": (0.30, 0.20, 0.10, 0.05), "mochi": (0.40, 0.60, 0.25, 0.20)}
        return {"command": "python -m bench.step --parts negatives", "date": "d", "precision": "bf16",
                "queue_size": 16384, "batch": 256, "repeats": 15, "goal_added_share": 0.1,
                **({"cpu_share": share} if share is not None else {}),
                "machine": {"load_average_at_start": [load, load, load], "cpu_count": 2, "torch_threads": 2},
                "strategies": {k: {"step_s": a, "added_share_of_plain_step": b, "loss_path_s": c,
                                   "loss_path_added_s": d} for k, (a, b, c, d) in rows.items()}}

    quiet = "\n".join(_negatives(result(1.0), resnet18_step_s=5.0))
    assert "| mochi | 0.400 | 60.0 % | 0.250 | +0.200 | 4.0 % |" in quiet
    assert "On the default ConvNet (whole steps): **MISSED** for hcl, mochi." in quiet
    assert "On a ResNet-18 step at B = 256 (5.00 s, the loss path's added time): **met**." in quiet
    assert "**MISSED** for mochi." in "\n".join(_negatives(result(1.0), resnet18_step_s=1.0))  # 20 % of 1 s
    loaded = "\n".join(_negatives(result(9.0), resnet18_step_s=None))
    assert "**not judged**" in loaded and "ResNet-18 step at" not in loaded
    # with the benchmark's own CPU share recorded, that decides, whatever the load average says
    assert "**MISSED** for hcl, mochi" in "\n".join(_negatives(result(9.0, share=0.97), resnet18_step_s=None))
    shared = "\n".join(_negatives(result(1.0, share=0.55), resnet18_step_s=None))
    assert "had 55 % of its 2 threads' CPU time" in shared and "**not judged**" in shared


def test_allocator_part_renders_each_variant_and_a_skip():
    from bench.allocator_step import render

    def row(kept: float, defaults: float) -> dict:
        return {"kept": {"images_per_s": kept}, "defaults": {"images_per_s": defaults},
                "kept_over_defaults": kept / defaults}

    page = "\n".join(render({"command": "python -m bench.step --parts allocator", "date": "d",
                             "machine": {"cpu": "AMD EPYC"}, "steps_per_epoch": 30, "epochs_per_process": 3,
                             "rounds": 2, "variants": {"fp32, main thread": row(1321.0, 968.0),
                                                       "bf16, worker thread": row(1900.0, 2000.0)}}))
    assert "| fp32, main thread | 1,321 | 968 | 1.36x |" in page
    assert "| bf16, worker thread | 1,900 | 2,000 | 0.95x |" in page
    assert "skipped (not glibc)" in "\n".join(render({"skipped": "not glibc", "machine": {}}))


def test_encoder_summarises_over_seeds_and_judges_the_grid_against_raw_and_untrained(tmp_path):
    from bench import encoder

    def runs(trained_probe):
        return [{"pool_grid": grid, "seed": seed, "raw": {"val_knn_top1": 77.0, "val_probe_top1": 81.3},
                 "untrained": {"val_knn_top1": 60.0 + grid, "val_probe_top1": 79.0 + 0.1 * seed},
                 "trained": {"val_knn_top1": 70.0 + grid, "val_probe_top1": trained_probe + 0.1 * seed}, "train_s": 1.0}
                for grid in encoder.GRIDS for seed in encoder.SEEDS]

    result = {"space": "hardneg", "quick": False, "seeds": list(encoder.SEEDS), "torch_threads": 2, "compute": 8,
              "train_subset": 15000, "width": 16, "runs": runs(82.5)}
    stats = encoder.summary(result)
    mean, lo, hi = stats["MoCo v2 baseline trained, pool_grid 2"]["val_probe_top1"]
    assert mean == pytest.approx(82.7) and lo < mean < hi  # seeds 1, 2, 3 add 0.1, 0.2, 0.3
    assert stats["untrained encoder, pool_grid 1"]["val_knn_top1"][0] == pytest.approx(61.0)
    assert stats["trained minus raw, pool_grid 2 (paired by seed)"]["val_probe_top1"][0] == pytest.approx(1.4)
    assert [goal[2] for goal in encoder.goals(result)] == [True, True]
    assert [goal[2] for goal in encoder.goals({**result, "runs": runs(81.0)})] == [False, True]  # below raw pixels
    text = "\n".join(encoder.render(result, tmp_path))
    assert "| raw pixels (centred) | 77.00 [77.00, 77.00] | 81.30 [81.30, 81.30] |" in text
    assert "(the search's budget)" in text


def test_the_machine_record_names_the_cpu_generation_beside_its_model_name():
    import pathlib
    import re

    from bench import common

    m = common.machine()
    if pathlib.Path("/proc/cpuinfo").is_file() and "cpu family" in pathlib.Path("/proc/cpuinfo").read_text():
        assert re.fullmatch(r"\d+/\d+/\d+", m["cpu_id"]), m["cpu_id"]  # e.g. AMD EPYC Zen 4: 25/17/1
    else:
        assert m["cpu_id"] == "?/?/?"
    from bench.step import _environment  # the step benchmark writes its own machine record

    assert _environment("x")["machine"]["cpu_id"] == m["cpu_id"]


def test_a_result_from_another_cpu_is_kept_beside_the_new_one_and_shown_after_it(monkeypatch, tmp_path):
    from bench import common, page, study_wall

    here = {"cpu": "Intel(R) Xeon(R) Processor", "cpu_bf16_flags": ["amx_bf16", "avx512_bf16"]}
    elsewhere = {"cpu": "AMD EPYC", "cpu_bf16_flags": ["avx512_bf16"]}
    monkeypatch.setattr(common, "machine", lambda: here)
    assert common.cpu_tag(here) == "intel-xeon+amx_bf16+avx512_bf16"
    assert common.cpu_tag(elsewhere) == "amd-epyc+avx512_bf16" != common.cpu_tag({**elsewhere, "cpu_bf16_flags": []})

    path = tmp_path / "study_wall.json"
    assert common.keep_other_cpu(path) is None  # nothing there yet
    common.write_json(path, {"machine": here, "result": {"x": 1}})
    assert common.keep_other_cpu(path) is None and path.is_file()  # same CPU: the new run replaces it
    common.write_json(path, {"machine": elsewhere, "mode": "full", "command": "old", "result": {"x": 2}})
    assert common.saved_result(tmp_path, "study_wall")["x"] == 2
    assert common.saved_result(tmp_path, "study_wall", this_cpu=True) is None  # not reused across CPUs
    kept = common.keep_other_cpu(path)
    assert kept == tmp_path / "study_wall@amd-epyc+avx512_bf16.json" and not path.exists()
    assert common.read_json(kept)["result"] == {"x": 2}
    assert common.other_cpu_files(tmp_path, "study_wall") == [kept]

    sides = {"auto": {"precision": ["bf16"], "wall_s": 100.0, "inside_epochs_s": 80.0, "trials": 1, "trial_epochs": 2,
                      "epoch_s": {"one-way": common.stats([4.0]), "dual-view": common.stats([])}, "command": "a"}}
    sides["fp32"] = {**sides["auto"], "precision": ["fp32"], "wall_s": 150.0, "command": "f"}
    result = {**sides, "fp32_over_auto": {"wall": 1.5, "inside_epochs": 1.0, "epoch_one-way": 1.0,
                                          "epoch_dual-view": None}}
    common.write_json(path, {"machine": here, "mode": "full", "command": "new", "result": result})
    common.write_json(kept, {"machine": elsewhere, "mode": "full", "command": "old", "result": {**result,
                             "fp32_over_auto": {**result["fp32_over_auto"], "wall": 1.04}}})
    text = page.write_page(tmp_path, tmp_path / "page.md", {"study_wall": study_wall}).read_text()
    assert "1.50x" in text and "1.04x" in text and text.index("1.50x") < text.index("1.04x")
    assert "### The same benchmark on another CPU: AMD EPYC, bf16 flags: avx512_bf16" in text
    fake = SimpleNamespace(TITLE="T", render=lambda r, figs: [f"x is {r['x']}", ""],
                           goals=lambda r: [("x small", str(r["x"]), r["x"] < 2)])
    common.write_json(path, {"machine": here, "mode": "full", "command": "new", "result": {"x": 1}})
    common.write_json(kept, {"machine": elsewhere, "mode": "full", "command": "old", "result": {"x": 2}})
    text = page.write_page(tmp_path, tmp_path / "page.md", {"study_wall": fake}).read_text()
    assert "| T | full | x small | 1 | met |" in text and "| T | full (AMD EPYC) | x small | 2 | **missed** |" in text
    assert text.index("x is 1") < text.index("x is 2")
    # a file of this CPU's tag kept from earlier (another setting's run) is not called another CPU
    common.write_json(path, {"machine": elsewhere, "mode": "full", "command": "newer", "result": {"x": 3}})
    text = page.write_page(tmp_path, tmp_path / "page.md", {"study_wall": fake}).read_text()
    assert "### The same benchmark on the same CPU model, an earlier run: AMD EPYC" in text
    assert "another CPU" not in text


def test_a_result_from_another_cpu_draws_its_figures_beside_this_cpus(tmp_path):
    """A kept result's figures get the CPU in their names: the other CPU's section, rendered after, once overwrote
    this CPU's ``figures/efficiency.png``, and both sections showed the other CPU's figure."""
    from bench import common, page

    def render(r, figs):
        (figs / "t.png").write_text(str(r["x"]))
        return [f"x is {r['x']}", "![t](figures/t.png)", ""]

    fake = SimpleNamespace(TITLE="T", render=render, goals=lambda r: [])
    common.write_json(tmp_path / "t.json", {"machine": {"cpu": "Intel(R) Xeon(R) Processor"}, "result": {"x": 1}})
    common.write_json(tmp_path / "t@amd-epyc.json", {"machine": {"cpu": "AMD EPYC"}, "result": {"x": 2}})
    text = page.write_page(tmp_path, tmp_path / "docs" / "page.md", {"t": fake}).read_text()
    figs = tmp_path / "docs" / "figures"
    assert sorted(f.name for f in figs.iterdir()) == ["t.png", "t@amd-epyc.png"]
    assert (figs / "t.png").read_text() == "1" and (figs / "t@amd-epyc.png").read_text() == "2"
    mine, other = text.split("### The same benchmark on another CPU")
    assert "![t](figures/t.png)" in mine and "![t](figures/t@amd-epyc.png)" in other
