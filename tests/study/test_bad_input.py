"""Bad input, round two (issue #19): each class is refused before anything starts — exit 2, one message naming the
file or flag and the key, no traceback, nothing written — and valid edge cases are accepted.

Case names start with the issue's class number (1-12); the report's cases are in
``tests/analysis/test_bad_report_input.py``, and :func:`test_every_class_has_a_case` keeps every class covered."""

from __future__ import annotations

import pytest
import torch

from moco.train import main as train_main
from study import submit
from study.run import main
from tests.analysis.test_bad_report_input import BAD as BAD_REPORTS
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
ABLATION_TEXT = (CONFIGS / "ablation.yaml").read_text()


def _space(search: str = "", study: str = "", **replace: str) -> str:
    """SPACE with ``search`` lines added to its search section, ``study`` lines to its study section, and
    ``replace`` (old text -> new text) applied."""
    text = SPACE.replace("study:", search + "study:") + study
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def _study(argv: list[str], tmp_path, capsys, space: str | bytes | None = None) -> tuple[int, str]:
    if space is not None:
        path = tmp_path / "space.yaml"
        path.write_bytes(space if isinstance(space, bytes) else space.encode())
        argv = ["--space", str(path), *argv]
    status = main(["--storage", str(tmp_path / "runs"), *argv, "--dry-run"])
    return status, capsys.readouterr().err


_QUEUE_WHEN = "  queue_size: {type: int, low: 512, high: 1024, when: '%s'}\n"

# name -> (space text or None for the ablation file, extra argv, text the message must hold)
BAD = {
    # 1. files that are not UTF-8 text
    "1 space file in UTF-16": (SPACE.encode("utf-16"), [], "space.yaml"),
    "1 space file in Latin-1": (SPACE.replace("study:", "# réglages\nstudy:").encode("latin-1"), [], "space.yaml"),
    # 2. YAML the loader should not accept
    "2 a variant defined twice": ("base: {config: digits, overrides: {val_size: 300}}\nvariants:\n  a: {}\n"
                                  "  b: {temperature: 0.1}\n  b: {temperature: 0.3}\nseeds: [0]\n", [], "'b'"),
    "2 alias bomb in the search": (_space(**{"study:": "bomb: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdef", "bcdefg"))
        + "study:"}), [], "alias"),
    # 4. --set values
    "4 --set with a tag": (SPACE, ["--set", "temperature=!!float 0.1"], "--set temperature"),
    "4 --set unclosed": (SPACE, ["--set", "temperature='0.1"], "--set temperature"),
    # 3. `when` conditions
    "3 when with a word": (_space(search=_QUEUE_WHEN % "hard_negative_ratio < abc"), [], "search.queue_size.when"),
    "3 when unparsable": (_space(search=_QUEUE_WHEN % "hard_negative_ratio == [1,"), [], "search.queue_size.when"),
    "3 when orders a string": (_space(**{"  hard_negative_ratio: {type: float, low: 0.05, high: 1.0}":
                                       "  norm: {type: categorical, choices: [batch, group]}"},
                                    search=_QUEUE_WHEN % "norm < 1"),
                             [], "search.queue_size.when"),
    # 5. numbers that are not finite or out of range
    "5 cpus nan": (SPACE, ["--cpus-per-worker", "nan"], "--cpus-per-worker"),
    "5 cpus inf": (SPACE, ["--cpus-per-worker", "inf"], "--cpus-per-worker"),
    "5 cpus negative": (SPACE, ["--cpus-per-worker", "-1"], "--cpus-per-worker"),
    "5 cpus zero": (SPACE, ["--cpus-per-worker", "0"], "--cpus-per-worker"),
    "5 study cpus .inf": (_space(study="  cpus_per_worker: .inf\n"), [], "study.cpus_per_worker"),
    "5 seed negative": (SPACE, ["--seed", "-1"], "--seed"),
    "5 seed above numpy": (SPACE, ["--seed", str(2**40)], "--seed"),
    "5 base seed above numpy": (SPACE.replace("config: digits", "config: digits\n  overrides: {seed: 5000000000}"), [],
                              "seed"),
    "5 1.5 GPUs per worker": (SPACE, ["--gpus-per-worker", "1.5"], "--gpus-per-worker"),
    "5 max_concurrent true": (_space(study="  max_concurrent: true\n"), [], "study.max_concurrent"),
    "5 a billion trials": (SPACE, ["--num-samples", str(10**9)], "--num-samples"),
    "5 variant seed above numpy": (ABLATION_TEXT.replace("seeds: [0, 1, 2]", "seeds: [0, 5000000000]"), [], "seeds"),
    "5 confirmation seed below 0": (SPACE + "confirm: {seeds: [-1]}\n", [], "confirm.seeds"),
    "5 address port out of range": (SPACE, ["--address", "127.0.0.1:99999"], "--address"),
    "5 address port not a number": (SPACE, ["--address", "head:abc"], "--address"),
    # 6. accepted by --dry-run before, failing only after Ray started
    "6 grace above budget": (_space(study="  grace_period: 10\n"), [], "study.grace_period"),
    "6 metric never reported": (_space(study="  metric: val_knn_top5\n"), [], "study.metric"),
    "6 grid with a condition": (_space(study="  searcher: grid\n").replace(
        "study:", "  queue_size: {type: int, low: 512, high: 1024, when: 'hard_negative_ratio < 1'}\nstudy:"), [],
        "search.queue_size.when"),
    "6 int with a fractional step": (_space().replace(
        "study:", "  knn_k: {type: int, low: 10, high: 20, step: 2.5}\nstudy:"), [], "search.knn_k.step"),
    "6 grid of 10^10 points": (_space(study="  searcher: grid\n  grid_points: 100\n").replace("study:", "".join(
        f"  {k}: {{type: float, low: 0.1, high: 0.9}}\n" for k in ("momentum", "knn_t", "false_negative_threshold"))
        + "study:"), [], "study.grid_points"),
    "6 step not dividing the range": (_space(**{"low: 0.05, high: 1.0}": "low: 0.05, high: 1.0, step: 0.1}"}), [],
                                    "search.hard_negative_ratio.step"),
    "6 epochs searched": (_space().replace("study:", "  epochs: {type: int, low: 2, high: 4}\nstudy:"), [],
                        "search.epochs"),
    "6 seeds with a search": (SPACE + "seeds: [0, 1]\n", [], "seeds"),
    "6 num-samples with variants": (None, ["--num-samples", "3"], "--num-samples"),
    # 7. training configs that passed validation and failed inside the worker
    "7 val_size above the dataset": (SPACE.replace("config: digits", "config: digits\n  overrides: {val_size: 5000}"),
                                   [], "val_size"),
    "7 train_subset above the dataset": (SPACE, ["--set", "train_subset=100000"], "train_subset"),
    "7 bn_splits not dividing the batch": (SPACE, ["--set", "bn_splits=7"], "bn_splits"),
    "7 image_size without bound": (SPACE, ["--set", "image_size=100000"], "image_size"),
    "7 device cuda without GPUs": (SPACE, ["--set", "device=cuda"], "device"),
    "7 a variant on cuda without GPUs": ("base: {config: digits, overrides: {val_size: 300}}\nvariants:\n  a: {}\n"
                                         "  b: {device: cuda}\nseeds: [0]\n", [], "variants.b.device"),
    "7 device searched over cuda": (_space(search="  device: {type: categorical, choices: [cpu, cuda]}\n"), [],
                                    "search.device"),
    "7 batch above the training images": (SPACE, ["--set", "train_subset=100", "--set", "batch_size=128"],
                                          "batch_size"),
    # 8. names and paths
    "8 name with dots": (SPACE, ["--name", "../../x"], "--name"),
    "8 absolute name": (SPACE, ["--name", "/tmp/x"], "--name"),
    "8 dot name": (SPACE, ["--name", "."], "--name"),
    "8 name with a slash": (SPACE, ["--name", "a/b"], "--name"),
    "8 empty name": (SPACE, ["--name", ""], "--name"),
    "8 empty storage": (SPACE, ["--storage", " "], "--storage"),
    "8 data_root is a file": (SPACE, ["--set", f"data_root={CONFIGS / 'digits.yaml'}"], "data_root"),
    "8 variant name with a slash": (ABLATION_TEXT.replace("  filter:", "  filter/x:"), [], "variants.'filter/x'"),
    "8 storage URI without a bucket": (SPACE, ["--storage", "s3://"], "--storage"),
    "8 name of dots only": (SPACE, ["--name", ".."], "--name"),
    # 12. unclear refusals made clear
    "12 a space file as the base config": (SPACE.replace("config: digits", f"config: {CONFIGS / 'hardneg.yaml'}"),
                                           [], "space file"),
    "12 fixed null": (_space().replace("study:", "  width: {type: fixed, value: null}\nstudy:"), [],
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


# study/submit.py --dry-run: name -> (argv after --space hardneg --storage s3://b/s --dry-run, text in the message)
BAD_SUBMISSIONS = {
    "9 submit: --num-samples not a number": (["--num-samples", "abc"], "--num-samples"),
    "9 submit: --max-concurrent -1": (["--max-concurrent", "-1"], "--max-concurrent"),
    "9 submit: --set temperature=-1": (["--set", "temperature=-1"], "temperature"),
    "9 submit: --cpus-per-worker nan": (["--cpus-per-worker", "nan"], "--cpus-per-worker"),
    "9 submit: --name with a slash": (["--name", "a/b"], "--name"),
    "9 submit: --set device=cuda without GPUs": (["--set", "device=cuda"], "device"),
    "9 submit: an unknown space": (["--space", "no-such-space"], "no-such-space"),
}


@pytest.mark.parametrize("case", sorted(BAD_SUBMISSIONS))
def test_submit_checks_what_it_forwards_as_run_does(case, tmp_path, capsys, monkeypatch):
    argv, expected = BAD_SUBMISSIONS[case]
    monkeypatch.chdir(tmp_path)
    try:
        status = submit.main(["--space", "hardneg", "--storage", "s3://b/s", "--dry-run", *argv])
    except SystemExit as exit:  # argparse's own refusal of a value its type does not accept
        status = exit.code
    err = capsys.readouterr().err
    assert status == 2, (case, err)
    # one error line, last (argparse prints its usage above its own refusals)
    assert expected in err.strip().splitlines()[-1] and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())


def test_submit_forwards_every_run_option():
    """Every option of study/run.py reaches the job (except those submit sets itself), as run.py spells it."""
    args = submit.build_parser().parse_args(["--name", "n", "--num-samples", "3", "--resume", "--confirm", "--seed",
                                             "4", "--set", "lr=0.1", "--set", "epochs=2", "--no-report"])
    assert submit.forwarded(args) == ["--name", "n", "--num-samples", "3", "--resume", "--confirm", "--seed", "4",
                                      "--set", "lr=0.1", "--set", "epochs=2", "--no-report"]
    forwarded = {o for a in submit.forwarded_actions() for o in a.option_strings}
    assert "--num-samples" in forwarded and not forwarded & set(submit.OWN_OPTIONS)


# python -m moco.train: name -> (argv after --config digits.yaml, text in the message)
BAD_TRAINING = {
    "7 train: device cuda without --gpus": (["--set", "device=cuda"], "device"),
    "7 train: val_size above the dataset": (["--set", "val_size=1500"], "val_size"),
    "8 train: data_root missing": (["--set", "data_root=/no/such/folder"], "data_root"),
    "12 train: a space file as the config": (["--config", str(CONFIGS / "hardneg.yaml")], "space file"),
}
if not torch.cuda.is_available():
    BAD_TRAINING["7 train: device cuda in-process without a GPU"] = (["--set", "device=cuda", "--workers", "0"],
                                                                     "CUDA GPU (none found here)")


@pytest.mark.parametrize("case", sorted(BAD_TRAINING))
def test_training_cli_refuses_before_anything_starts(case, tmp_path, capsys):
    argv, expected = BAD_TRAINING[case]
    status = train_main(["--config", str(CONFIGS / "digits.yaml"), "--storage", str(tmp_path / "runs"), *argv])
    err = capsys.readouterr().err
    assert status == 2, (case, err)
    assert expected in err and "Traceback" not in err and err.count("\n") <= 2, err
    assert not (tmp_path / "runs").exists()


def test_every_class_has_a_case():
    """Class 11 (a valid space refused) is covered by the valid case that names it."""
    names = [name.split()[0] for name in (*BAD, *BAD_SUBMISSIONS, *BAD_TRAINING, *BAD_REPORTS, *GOOD)]
    assert {int(n) for n in names if n.isdigit()} == set(range(1, 13))


# name -> (space text, extra argv): valid edge cases that must be accepted
GOOD = {
    "exponent written as 1e-4": (SPACE.replace("low: 0.05, high: 0.5, log: true", "low: 1e-4, high: 1e-1, log: true"),
                                 []),
    "11 many categorical parameters (5 x 4^5 = 5,120 corners)": (_space().replace("study:", "".join(
        f"  {k}: {{type: categorical, choices: {v}}}\n" for k, v in (
            ("queue_size", "[512, 1024, 2048, 4096]"), ("width", "[4, 8, 16, 32]"),
            ("feature_dim", "[16, 32, 64, 128]"), ("mlp_hidden", "[32, 64, 128, 256]"),
            ("knn_k", "[10, 20, 50, 100, 150]"), ("bn_splits", "[1, 2, 4, 8]")))
        + "study:"), []),
    "when on a categorical string": (_space(search="  norm: {type: categorical, choices: [batch, group]}\n"
                                                   "  bn_splits: {type: int, low: 1, high: 4, when: 'norm == batch'}"
                                                   "\n"), []),
    "step dividing the range": (_space(**{"low: 0.05, high: 1.0}": "low: 0.1, high: 1.0, step: 0.1}"}), []),
    "a UTF-8 BOM and accents in a comment": (b"\xef\xbb\xbf# r\xc3\xa9glages\n" + SPACE.encode(), []),
    "data_root null": (SPACE.replace("config: digits", "config: digits\n  overrides: {data_root: null}"),
                       ["--set", "data_root=null"]),
    "data_root an existing folder": (SPACE, ["--set", f"data_root={CONFIGS}"]),
    "a fixed value of 0": (_space(search="  selection_warmup_epochs: {type: fixed, value: 0}\n"), []),
    "device cpu and auto": (SPACE.replace("config: digits", "config: digits\n  overrides: {device: cpu}"),
                            ["--set", "device=auto"]),
    "address auto, not contacted by the dry run": (SPACE, ["--address", "auto"]),
}


@pytest.mark.parametrize("case", sorted(GOOD))
def test_valid_edge_cases_are_accepted(case, tmp_path, capsys):
    space, argv = GOOD[case]
    status, err = _study(argv, tmp_path, capsys, space)
    assert status == 0, err
    assert not (tmp_path / "runs").exists()
