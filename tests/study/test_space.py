"""Space files: every shipped one plans (--dry-run), every malformed one fails with exit 2 naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.run import main
from study.params import SpaceError
from study.space import CONFIG_DIR, load_space

SHIPPED = sorted(p.name for p in CONFIG_DIR.glob("*.yaml")
                 if "search:" in p.read_text() or "variants:" in p.read_text())

GOOD = """
base:
  config: digits
search:
  temperature: {type: float, low: 0.05, high: 0.5, log: true}
  queue_size: {type: categorical, choices: [512, 1024]}
study:
  num_samples: 3
"""


def test_shipped_space_files_are_found():
    assert {"hardneg.yaml", "cifar10-hardneg.yaml", "ablation.yaml"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_dry_run_of_every_shipped_space(name, capsys, tmp_path):
    assert main(["--space", name, "--dry-run", "--storage", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "budget" in out and "resources" in out and "dry run: nothing started" in out
    assert not (tmp_path / "runs").exists()


def test_plan_says_when_fewer_trials_fit_than_requested():
    from study.cli import describe_plan, plan_resources

    space = load_space(str(_write(GOOD + "  cpus_per_worker: 2\n  max_concurrent: 2\n")))
    plan = plan_resources(space, cpus=2, gpus=0)
    assert plan["max_concurrent"] == 2 and plan["fit_at_once"] == 1
    assert "2 trial(s) at once on 2 CPUs / 0 GPUs (only 1 fit(s) now" in describe_plan(space, plan, "runs/x")
    roomy = plan_resources(space, cpus=4, gpus=0)
    assert roomy["fit_at_once"] == 2 and "fit(s) now" not in describe_plan(space, roomy, "runs/x")


def test_good_space_loads_with_baseline_first():
    space = load_space(str(_write(GOOD)))
    assert [p.name for p in space.params] == ["temperature", "queue_size"]
    assert space.baseline_point() == {"temperature": 0.2, "queue_size": 512}
    assert space.trial_config({"temperature": 0.1, "queue_size": 1024}).queue_size == 1024


def test_bare_name_resolves_in_configs():
    assert Path(load_space("hardneg").source) == CONFIG_DIR / "hardneg.yaml"
    assert Path(load_space("hardneg.yaml").source) == CONFIG_DIR / "hardneg.yaml"


def test_conditional_parameter_only_when_condition_holds():
    text = GOOD.replace("study:", "  hard_negative_ratio: {type: float, low: 0.05, high: 1.0}\n"
                        "  selection_warmup_epochs: {type: int, low: 0, high: 2, when: 'hard_negative_ratio < 1'}\n"
                        "study:")
    space = load_space(str(_write(text)))
    warm = space.params[-1]
    assert warm.active({"hard_negative_ratio": 0.5}) and not warm.active({"hard_negative_ratio": 1.0})
    assert "selection_warmup_epochs" not in space.baseline_point()


MALFORMED = {
    "yaml syntax": ("search:\n  temperature: {type: float, low: 0.1\n", "line"),
    "unknown section": (GOOD + "serach: {}\n", "serach"),
    "unknown study key": (GOOD.replace("num_samples: 3", "num_sample: 3"), "study.num_sample"),
    "unknown parameter": (GOOD.replace("temperature:", "temprature:"), "search.temprature"),
    "unknown param type": (GOOD.replace("type: float", "type: real"), "search.temperature.type"),
    "unknown param key": (GOOD.replace("log: true", "logscale: true"), "search.temperature.logscale"),
    "wrong type for bound": (GOOD.replace("low: 0.05", "low: small"), "search.temperature.low"),
    "empty range": (GOOD.replace("low: 0.05, high: 0.5", "low: 0.2, high: 0.2"), "search.temperature"),
    "inverted range": (GOOD.replace("low: 0.05, high: 0.5", "low: 0.5, high: 0.05"), "search.temperature"),
    "log range touching zero": (GOOD.replace("low: 0.05", "low: 0.0"), "search.temperature.low"),
    "value the config rejects": (GOOD.replace("temperature: {type: float, low: 0.05, high: 0.5, log: true}",
                                              "hard_negative_ratio: {type: float, low: 0.1, high: 1.5}"),
                                 "hard_negative_ratio"),
    "queue smaller than a batch": (GOOD.replace("[512, 1024]", "[16, 1024]"), "queue_size"),
    "empty categorical": (GOOD.replace("[512, 1024]", "[]"), "search.queue_size.choices"),
    "missing base config": (GOOD.replace("config: digits", "config: no_such_config"), "base.config"),
    "bad base override": (GOOD.replace("config: digits", "config: digits\n  overrides: {temperatur: 0.1}"),
                          "temperatur"),
    "bad mode": (GOOD.replace("num_samples: 3", "mode: maximise"), "study.mode"),
    "bad searcher": (GOOD.replace("num_samples: 3", "searcher: hyperopt"), "study.searcher"),
    "zero samples": (GOOD.replace("num_samples: 3", "num_samples: 0"), "study.num_samples"),
    "condition on unknown param": (GOOD.replace("study:", "  selection_warmup_epochs: {type: int, low: 0, high: 2,"
                                                " when: 'ratio < 1'}\nstudy:"), "selection_warmup_epochs.when"),
    "empty search": ("base: {config: digits}\nsearch: {}\n", "search"),
    "bad seeds": ("base: {config: digits}\nvariants: {baseline: {}}\nseeds: [0, zero]\n", "seeds"),
    "monitor not every epoch": ("base:\n  config: digits\n  overrides: {knn_every: 2}\nvariants: {baseline: {}}\n"
                                "seeds: [0]\n", "base.overrides.knn_every"),
    "variant monitor not every epoch": ("base: {config: digits}\nvariants: {rare: {knn_every: 5}}\nseeds: [0]\n",
                                        "variants.rare.knn_every"),
    "bad variant value": ("base: {config: digits}\nvariants: {hot: {temperature: -1}}\nseeds: [0]\n",
                          "variants.hot.temperature"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_space_exits_2_naming_the_key(case, capsys, tmp_path):
    text, key = MALFORMED[case]
    path = _write(text, tmp_path)
    storage = tmp_path / "runs"
    assert main(["--space", str(path), "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and key in err, err
    assert not storage.exists() or not any(storage.iterdir())
    with pytest.raises(SpaceError):
        load_space(str(path))


def test_missing_space_file_is_exit_2(capsys, tmp_path):
    assert main(["--space", str(tmp_path / "nope.yaml"), "--storage", str(tmp_path)]) == 2
    assert "no such space file" in capsys.readouterr().err


def test_existing_run_without_resume_and_resume_of_nothing(capsys, tmp_path):
    path = _write(GOOD, tmp_path)
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    assert main(["--space", str(path), "--storage", str(tmp_path / "runs"), "--name", "taken"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["--space", str(path), "--storage", str(tmp_path / "runs"), "--name", "ghost", "--resume"]) == 2
    assert "no study named 'ghost'" in capsys.readouterr().err


def test_more_workers_than_the_machine_holds_is_exit_2(capsys, tmp_path):
    path = _write(GOOD, tmp_path)
    assert main(["--space", str(path), "--storage", str(tmp_path / "runs"), "--workers-per-trial", "64"]) == 2
    assert "one trial needs 64 CPUs" in capsys.readouterr().err
    assert not (tmp_path / "runs" / path.stem).exists()


def test_gpu_request_without_gpu_is_exit_2(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    path = _write(GOOD, tmp_path)
    assert main(["--space", str(path), "--storage", str(tmp_path / "runs"), "--gpus-per-worker", "1"]) == 2
    assert "GPU" in capsys.readouterr().err


def _write(text: str, directory: Path | None = None) -> Path:
    import tempfile

    directory = directory or Path(tempfile.mkdtemp())
    path = directory / "space.yaml"
    path.write_text(text)
    return path
