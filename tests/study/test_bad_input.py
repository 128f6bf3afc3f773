"""Bad input, round two (issue #19): each class is refused by the dry run, before anything starts — exit 2, one
message naming the file or flag and the key, no traceback, nothing written — and valid edge cases are accepted."""

from __future__ import annotations

import pytest

from study.run import main
from tests.conftest import CONFIGS

SPACE = """
base:
  config: digits
search:
  temperature: {type: float, low: 0.05, high: 0.5, log: true}
  hard_negative_ratio: {type: float, low: 0.05, high: 1.0}
study:
  num_samples: 3
"""
ABLATION = str(CONFIGS / "ablation.yaml")


def _space(search: str = "", study: str = "", **replace: str) -> str:
    """SPACE with ``search`` lines added to its search section, ``study`` lines to its study section, and
    ``replace`` (old text -> new text) applied."""
    text = SPACE.replace("study:", search + "study:") + study
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def _study(argv: list[str], tmp_path, capsys, space: str | None = None) -> tuple[int, str]:
    if space is not None:
        path = tmp_path / "space.yaml"
        path.write_text(space)
        argv = ["--space", str(path), *argv]
    status = main(["--storage", str(tmp_path / "runs"), *argv, "--dry-run"])
    return status, capsys.readouterr().err


_QUEUE_WHEN = "  queue_size: {type: int, low: 512, high: 1024, when: '%s'}\n"

# name -> (space text or None for the ablation file, extra argv, text the message must hold)
BAD = {
    # 3. `when` conditions
    "when with a word": (_space(search=_QUEUE_WHEN % "hard_negative_ratio < abc"), [], "search.queue_size.when"),
    "when unparsable": (_space(search=_QUEUE_WHEN % "hard_negative_ratio == [1,"), [], "search.queue_size.when"),
    "when orders a string": (_space(**{"  hard_negative_ratio: {type: float, low: 0.05, high: 1.0}":
                                       "  norm: {type: categorical, choices: [batch, group]}"},
                                    search=_QUEUE_WHEN % "norm < 1"),
                             [], "search.queue_size.when"),
    # 5. numbers that are not finite or out of range
    "cpus nan": (SPACE, ["--cpus-per-worker", "nan"], "--cpus-per-worker"),
    "cpus inf": (SPACE, ["--cpus-per-worker", "inf"], "--cpus-per-worker"),
    "cpus negative": (SPACE, ["--cpus-per-worker", "-1"], "--cpus-per-worker"),
    "cpus zero": (SPACE, ["--cpus-per-worker", "0"], "--cpus-per-worker"),
    "study cpus .inf": (_space(study="  cpus_per_worker: .inf\n"), [], "study.cpus_per_worker"),
    "seed negative": (SPACE, ["--seed", "-1"], "--seed"),
    "seed above numpy": (SPACE, ["--seed", str(2**40)], "--seed"),
    "base seed above numpy": (SPACE.replace("config: digits", "config: digits\n  overrides: {seed: 5000000000}"), [],
                              "seed"),
    "1.5 GPUs per worker": (SPACE, ["--gpus-per-worker", "1.5"], "--gpus-per-worker"),
    "max_concurrent true": (_space(study="  max_concurrent: true\n"), [], "study.max_concurrent"),
    "a billion trials": (SPACE, ["--num-samples", str(10**9)], "--num-samples"),
    # 6. accepted by --dry-run before, failing only after Ray started
    "grace above budget": (_space(study="  grace_period: 10\n"), [], "study.grace_period"),
    "metric never reported": (_space(study="  metric: val_knn_top5\n"), [], "study.metric"),
    "grid with a condition": (_space(study="  searcher: grid\n").replace(
        "study:", "  queue_size: {type: int, low: 512, high: 1024, when: 'hard_negative_ratio < 1'}\nstudy:"), [],
        "search.queue_size.when"),
    "int with a fractional step": (_space().replace(
        "study:", "  knn_k: {type: int, low: 10, high: 20, step: 2.5}\nstudy:"), [], "search.knn_k.step"),
    "grid of 10^10 points": (_space(study="  searcher: grid\n  grid_points: 100\n").replace("study:", "".join(
        f"  {k}: {{type: float, low: 0.1, high: 0.9}}\n" for k in ("momentum", "knn_t", "false_negative_threshold"))
        + "study:"), [], "study.grid_points"),
    "step not dividing the range": (_space(**{"low: 0.05, high: 1.0}": "low: 0.05, high: 1.0, step: 0.1}"}), [],
                                    "search.hard_negative_ratio.step"),
    "epochs searched": (_space().replace("study:", "  epochs: {type: int, low: 2, high: 4}\nstudy:"), [],
                        "search.epochs"),
    "seeds with a search": (SPACE + "seeds: [0, 1]\n", [], "seeds"),
    "num-samples with variants": (None, ["--num-samples", "3"], "--num-samples"),
    # 7. training configs that passed validation and failed inside the worker
    "val_size above the dataset": (SPACE.replace("config: digits", "config: digits\n  overrides: {val_size: 5000}"),
                                   [], "val_size"),
    "train_subset above the dataset": (SPACE, ["--set", "train_subset=100000"], "train_subset"),
    "bn_splits not dividing the batch": (SPACE, ["--set", "bn_splits=7"], "bn_splits"),
    "image_size without bound": (SPACE, ["--set", "image_size=100000"], "image_size"),
    # 8. names and paths
    "name with dots": (SPACE, ["--name", "../../x"], "--name"),
    "absolute name": (SPACE, ["--name", "/tmp/x"], "--name"),
    "dot name": (SPACE, ["--name", "."], "--name"),
    "name with a slash": (SPACE, ["--name", "a/b"], "--name"),
    "empty name": (SPACE, ["--name", ""], "--name"),
    "empty storage": (SPACE, ["--storage", " "], "--storage"),
    # 12. unclear refusals made clear
    "fixed null": (_space().replace("study:", "  width: {type: fixed, value: null}\nstudy:"), [],
                   "search.width.value"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_before_anything_starts(case, tmp_path, capsys):
    space, argv, expected = BAD[case]
    if space is None:
        argv = ["--space", ABLATION, *argv]
    status, err = _study(argv, tmp_path, capsys, space)
    assert status == 2, (case, err)
    assert expected in err and "Traceback" not in err and err.count("\n") <= 2, err
    assert not (tmp_path / "runs").exists()


def test_storage_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    assert main(["--space", str(path), "--storage", str(tmp_path / "file"), "--dry-run"]) == 2
    assert "--storage" in capsys.readouterr().err


GOOD = {
    "exponent written as 1e-4": SPACE.replace("low: 0.05, high: 0.5, log: true", "low: 1e-4, high: 1e-1, log: true"),
    "many categorical parameters (5 x 4^5 = 5,120 corners)": _space().replace("study:", "".join(
        f"  {k}: {{type: categorical, choices: {v}}}\n" for k, v in (
            ("queue_size", "[512, 1024, 2048, 4096]"), ("width", "[4, 8, 16, 32]"),
            ("feature_dim", "[16, 32, 64, 128]"), ("mlp_hidden", "[32, 64, 128, 256]"),
            ("knn_k", "[10, 20, 50, 100, 150]"), ("bn_splits", "[1, 2, 4, 8]")))
        + "study:"),
    "when on a categorical string": _space(search="  norm: {type: categorical, choices: [batch, group]}\n"
                                                  "  bn_splits: {type: int, low: 1, high: 4, when: 'norm == batch'}\n"),
    "step dividing the range": _space(**{"low: 0.05, high: 1.0}": "low: 0.1, high: 1.0, step: 0.1}"}),
}


@pytest.mark.parametrize("case", sorted(GOOD))
def test_valid_edge_cases_are_accepted(case, tmp_path, capsys):
    status, err = _study([], tmp_path, capsys, GOOD[case])
    assert status == 0, err
