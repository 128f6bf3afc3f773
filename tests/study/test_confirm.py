"""The confirmation stage's plan (study/confirm.py), without Ray: the `confirm:` section's validation, seeds disjoint
from the search's, candidate selection from a finished study's trials.csv, the runs' configs, --confirm refusals."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest

from moco.vocabulary import BASELINE
from study import confirm, confirm_run
from study.run import main
from study.params import SpaceError
from study.space import load_space
from study.trial import TrialPlan

SPACE = """
base:
  config: digits
  overrides: {{compute_budget: 2, seed: {seed}}}
search:
  temperature: {{type: float, low: 0.05, high: 0.5, log: true}}
  hard_negative_ratio: {{type: float, low: 0.1, high: 1.0}}
  queue_size: {{type: categorical, choices: [512, 1024]}}
study:
  num_samples: 6
  mode: {mode}
{confirm}"""


def space_file(tmp_path: Path, confirm_section: str = "confirm: {}", seed: int = 0, mode: str = "max") -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.format(seed=seed, mode=mode, confirm=confirm_section))
    return path


def error_of(tmp_path: Path, section: str, **kw) -> SpaceError:
    with pytest.raises(SpaceError) as info:
        load_space(str(space_file(tmp_path, section, **kw)))
    return info.value


# --- seeds ------------------------------------------------------------------------------------------------------
def test_default_seeds_are_fresh_and_three(tmp_path):
    for base_seed in (0, 1, 2, 7):
        space = load_space(str(space_file(tmp_path, seed=base_seed)))
        seeds = confirm.resolve_seeds(space, space.confirm)
        assert len(seeds) == 3 == len(set(seeds)) and base_seed not in seeds and min(seeds) >= 0


def test_seeds_of_the_search_are_refused(tmp_path):
    err = error_of(tmp_path, "confirm: {seeds: [4, 0]}")
    assert err.key == "confirm.seeds" and "[0]" in str(err) and "trained the search" in str(err)
    assert "e.g. [1, 2]" in str(err)  # a fresh suggestion of the same length


def test_searched_seed_and_variant_seeds_count_as_search_seeds(tmp_path):
    searched = SPACE.replace("study:", "  seed: {{type: int, low: 3, high: 5}}\nstudy:")
    path = tmp_path / "seeded.yaml"
    path.write_text(searched.format(seed=0, mode="max", confirm="confirm: {seeds: [1, 4]}"))
    with pytest.raises(SpaceError, match=r"seed\(s\) \[4\]"):
        load_space(str(path))
    path.write_text(searched.format(seed=0, mode="max", confirm="confirm: {}"))
    space = load_space(str(path))
    assert not set(confirm.resolve_seeds(space, space.confirm)) & {0, 3, 4, 5}
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: {config: digits}\nvariants: {baseline: {}, warm: {seed: 9, compute_budget: 2}}\n"
                    "seeds: [0, 1, 2]\nconfirm: {top: 1}\n")
    space = load_space(str(grid))
    assert confirm.search_seeds(space) == {0, 1, 2, 9}
    assert confirm.resolve_seeds(space, space.confirm) == [3, 4, 5]


def test_set_seed_after_loading_is_checked_again(tmp_path):
    space = load_space(str(space_file(tmp_path, "confirm: {seeds: [1, 2, 3]}")))
    space.base = space.base.replace(seed=2)  # what `--set seed=2` does
    with pytest.raises(SpaceError, match="confirm.seeds"):
        confirm.resolve_seeds(space, space.confirm)


# --- the section's schema -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("section, key, words", [
    ("confirm: {seed: [1]}", "confirm.seed", "did you mean 'seeds'"),
    ("confirm: {top: 0}", "confirm.top", "an integer >= 1"),
    ("confirm: {top: true}", "confirm.top", "an integer >= 1"),
    ("confirm: {seeds: [1, 1]}", "confirm.seeds", "duplicate"),
    ("confirm: {seeds: [-1]}", "confirm.seeds", "non-negative"),
    ("confirm: {seeds: []}", "confirm.seeds", "non-empty"),
    ("confirm: [1]", "confirm", "a mapping"),
    ("confirm: {overrides: {epoch: 4}}", "confirm.overrides.epoch", "did you mean 'epochs'"),
    ("confirm: {overrides: {temperature: 0.1}}", "confirm.overrides.temperature", "searched"),
    ("confirm: {overrides: {seed: 3}}", "confirm.overrides.seed", "confirm.seeds"),
    ("confirm: {overrides: {final_eval: false}}", "confirm.overrides.final_eval", "always True"),
    ("confirm: {overrides: {compute_budget: 0}}", "confirm.overrides.compute_budget", "an integer >= 1"),
    ("confirm: {overrides: {epochs: 6}}", "confirm.overrides.epochs", "set or search compute_budget instead"),
    ("confirm: {overrides: {batch_size: 1024}}", "confirm.overrides", "queue_size"),  # a corner (K = 512) breaks
])
def test_bad_sections_name_the_key(tmp_path, section, key, words):
    err = error_of(tmp_path, section)
    assert err.key == key and words in str(err) and str(space_file(tmp_path, section)) in str(err)


def test_section_defaults_and_overrides(tmp_path):
    space = load_space(str(space_file(tmp_path, "confirm:")))  # an empty section: every default
    assert space.confirm.top == 2 and space.confirm.seeds is None and space.confirm.overrides == {}
    assert load_space(str(space_file(tmp_path, ""))).confirm is None
    space = load_space(str(space_file(tmp_path, "confirm: {top: 1, seeds: [5, 6], overrides: {compute_budget: 4}}")))
    assert (space.confirm.top, space.confirm.seeds, space.confirm.overrides) == (1, [5, 6], {"compute_budget": 4})


# --- selection and the runs' configs --------------------------------------------------------------------------------
def finished_study(run_dir: Path, space, values: dict[str, tuple[str, float, dict]]) -> Path:
    """trials.csv and study.json as study/results.py writes them; trial 0 is the baseline."""
    rows = []
    for number, (tid, (status, value, params)) in enumerate(values.items()):
        rows.append({"trial_id": tid, "trial_number": number, "is_baseline": number == 0, "status": status,
                     "variant": None, "seed": 0, **{f"param_{k}": v for k, v in params.items()},
                     "val_knn_top1": value})
    run_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(run_dir / "trials.csv", index=False)
    (run_dir / "study.json").write_text(json.dumps({"status": "finished", "base_config": space.base.to_dict()}))
    return run_dir


def point(t, r, k):
    return {"temperature": t, "hard_negative_ratio": r, "queue_size": k}


TRIALS = {"b": ("completed", 60.0, point(0.2, 1.0, 512)), "p": ("pruned", 90.0, point(0.1, 0.5, 1024)),
          "x": ("completed", 70.0, point(0.1, 0.3, 1024)), "y": ("completed", 50.0, point(0.3, 0.9, 512)),
          "z": ("completed", 65.0, point(0.07, 0.2, 512)), "e": ("errored", float("nan"), point(0.4, 0.4, 512))}


def test_top_n_by_metric_baseline_apart(tmp_path):
    space = load_space(str(space_file(tmp_path, "confirm: {top: 2}")))
    job = confirm.plan(space, finished_study(tmp_path / "s", space, TRIALS))
    names = [(c.name, c.source_trial, c.search_rank, c.search_value) for c in job.candidates]
    # completed trials only (the pruned 90 is no candidate), ranked over all completed, the baseline apart
    assert names == [(BASELINE, "b", 3, 60.0), ("top1", "x", 1, 70.0), ("top2", "z", 2, 65.0)]
    assert job.candidates[0].params == space.baseline_point()
    assert job.candidates[1].params == point(0.1, 0.3, 1024)


def test_mode_min_and_fewer_trials_than_top(tmp_path):
    space = load_space(str(space_file(tmp_path, "confirm: {top: 5}", mode="min")))
    job = confirm.plan(space, finished_study(tmp_path / "s", space, TRIALS))
    assert [c.source_trial for c in job.candidates] == ["b", "y", "z", "x"]


def test_grid_variants_ranked_by_their_mean_over_seeds(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: {config: digits, overrides: {compute_budget: 2}}\nvariants: {baseline: {}, warm: "
                    "{temperature: 0.1}, cold: {temperature: 0.4}}\nseeds: [0, 1]\n"
                    "confirm: {top: 1, overrides: {compute_budget: 3}}\n")
    space = load_space(str(grid))
    values = {("baseline", 0): 60, ("baseline", 1): 62, ("warm", 0): 70, ("warm", 1): 50, ("cold", 0): 63,
              ("cold", 1): 64}  # means: baseline 61, warm 60, cold 63.5
    rows = [{"trial_id": f"{v}{s}", "trial_number": i, "is_baseline": v == "baseline", "status": "completed",
             "variant": v, "seed": s, "val_knn_top1": x} for i, ((v, s), x) in enumerate(values.items())]
    run_dir = tmp_path / "g"
    run_dir.mkdir()
    pd.DataFrame(rows).to_csv(run_dir / "trials.csv", index=False)
    job = confirm.plan(space, run_dir)
    assert [(c.name, c.params, c.search_rank, c.search_value, c.source_trial) for c in job.candidates] == [
        (BASELINE, {"variant": "baseline"}, 2, 61.0, "baseline0;baseline1"),
        ("top1", {"variant": "cold"}, 1, 63.5, "cold0;cold1")]
    assert job.seeds == [2, 3, 4] and job.config("top1", 3).temperature == 0.4 and job.config("top1", 3).epochs == 3


def test_run_configs_carry_the_budget_the_seed_and_every_endpoint(tmp_path):
    space = load_space(str(space_file(tmp_path, "confirm: {top: 1, seeds: [4, 5], overrides: {compute_budget: 5}}")))
    job = confirm.plan(space, finished_study(tmp_path / "s", space, TRIALS))
    assert job.runs == [(BASELINE, 4), (BASELINE, 5), ("top1", 4), ("top1", 5)]
    plan = TrialPlan(space=space, train_storage="x", workers=1, cpus_per_worker=1, gpus_per_worker=0,
                     configs=job.configs)
    cfg = plan.config({"candidate": "top1", "seed": 5})
    assert (cfg.seed, cfg.epochs, cfg.final_eval, cfg.linear_probe) == (5, 5, True, True)
    assert (cfg.temperature, cfg.hard_negative_ratio, cfg.queue_size) == (0.1, 0.3, 1024)
    base = plan.config({"candidate": BASELINE, "seed": 4})
    assert (base.dual_view_weight, base.hard_negative_ratio, base.false_negative_threshold) == (1.0, 1.0, 1.0)
    # the study's own trials are unchanged: a plan without configs takes points of the space
    study_plan = TrialPlan(space=space, train_storage="x", workers=1, cpus_per_worker=1, gpus_per_worker=0)
    assert study_plan.config(point(0.1, 0.3, 1024)).epochs == 2
    doc = job.describe(space)
    assert doc["budget"]["epochs"] == 5 and doc["search_budget"]["epochs"] == 2 and doc["search_seeds"] == [0]


def test_confirm_csv_has_a_row_per_candidate_and_seed(tmp_path):
    from study.results import record_trial

    space = load_space(str(space_file(tmp_path, "confirm: {top: 1, seeds: [4, 5]}")))
    run_dir = finished_study(tmp_path / "s", space, TRIALS)
    job = confirm.plan(space, run_dir)
    record_trial(run_dir / confirm.CONFIRM_DIR, "r1", params={"candidate": "top1", "seed": 5}, status="completed",
                 result={"final_val_knn_top1": 91.0, "raw_final_val_knn_top1": 88.0, "epoch": 2})
    table = pd.read_csv(run_dir / confirm.CSV) if confirm_run.write_csv(run_dir, job) is not None else None
    assert list(zip(table.candidate, table.seed)) == job.runs
    row = table[(table.candidate == "top1") & (table.seed == 5)].iloc[0]
    assert row.final_val_knn_top1 == 91.0 and row.raw_final_val_knn_top1 == 88.0 and row.status == "completed"
    assert row.source_trial == "x" and row.search_rank == 1 and json.loads(row.params)["queue_size"] == 1024
    assert set(table[table.trial_id.isna()].status) == {"pending"}


def test_a_confirmation_under_way_continues_only_as_planned(tmp_path):
    space = load_space(str(space_file(tmp_path, "confirm: {top: 1, seeds: [4, 5]}")))
    run_dir = finished_study(tmp_path / "s", space, TRIALS)
    job = confirm.plan(space, run_dir)
    (run_dir / confirm.JSON).write_text(json.dumps(job.describe(space)))
    assert confirm.plan(space, run_dir).runs == job.runs  # the same plan continues
    space.confirm = space.confirm.model_copy(update={"top": 2})  # the space file edited since (settings are frozen)
    with pytest.raises(confirm.ConfirmError, match="started with candidates"):
        confirm.plan(space, run_dir)


# --- --confirm refusals (exit 2, before Ray) ------------------------------------------------------------------------
def test_confirm_refusals(tmp_path, capsys):
    path = space_file(tmp_path, "confirm: {top: 1}")
    space = load_space(str(path))
    args = ["--space", str(path), "--storage", str(tmp_path / "runs"), "--confirm"]
    assert main(args + ["--name", "nope"]) == 2
    assert "--confirm: no study named 'nope'" in capsys.readouterr().err
    run_dir = finished_study(tmp_path / "runs" / "s", space, TRIALS)
    study = json.loads((run_dir / "study.json").read_text())
    (run_dir / "study.json").write_text(json.dumps({**study, "status": "interrupted"}))
    assert main(args + ["--name", "s"]) == 2
    assert "not finished: finish it first with --resume" in capsys.readouterr().err
    (run_dir / "study.json").write_text(json.dumps(study))
    assert main(args + ["--name", "s", "--set", "lr=0.5"]) == 2
    assert "lr: study 0.06, now 0.5" in capsys.readouterr().err
    finished_study(run_dir, space, {"b": TRIALS["b"], "p": TRIALS["p"]})
    assert main(args + ["--name", "s"]) == 2
    assert "nothing to confirm" in capsys.readouterr().err
    # right after a search the same outcome skips the stage: the search itself finished (exit 0, no error)
    args_after_search = argparse.Namespace(confirm=False, no_report=True, address=None)
    assert confirm_run.stage(space, args_after_search, run_dir, str(tmp_path / "runs"), resources={}) == 0
    out = capsys.readouterr()
    assert "[confirm] skipped: no trial besides the baseline completed" in out.out and "error" not in out.err
    # a new study whose --set makes a confirmation seed a search seed is refused before it starts
    seeded = space_file(tmp_path, "confirm: {seeds: [1, 2]}")
    assert main(["--space", str(seeded), "--storage", str(tmp_path / "runs"), "--name", "new", "--set", "seed=2"]) == 2
    assert "confirm.seeds" in capsys.readouterr().err and not (tmp_path / "runs" / "new").exists()
