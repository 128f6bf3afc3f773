"""Hostile YAML input is refused clearly (exit 2, the file and position named, no traceback, nothing written) by
both command lines, and valid edge cases are accepted."""

from __future__ import annotations

import pytest

from moco import safe_yaml
from moco.config import TrainConfig
from moco.train import main as train_main
from study.run import main as study_main
from tests.conftest import CONFIGS

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
SPACE = (CONFIGS / "smoke" / "mini.yaml").read_text()

# name -> (file bytes, text expected in the message)
BAD_FILES = {
    "utf-16": (SPACE.encode("utf-16"), "not UTF-8 text"),
    "latin-1": ("# température\n".encode("latin-1") + SPACE.encode(), "not UTF-8 text"),
    "binary": (bytes(range(256)) * 4, "not UTF-8 text"),
    "nul bytes": (b"a: 1\x00\n", "not a text file"),
    "alias bomb": (BOMB.encode(), "alias bomb"),
    "too large": (b"x: [" + b"1, " * 400_000 + b"1]\n", "a YAML file of at most"),
    "duplicate key": (b"dataset: digits\nepochs: 2\nepochs: 3\n", "duplicate key 'epochs'"),
    "syntax": (b"dataset: [digits\n", "invalid YAML"),
}


def _run(main, argv, capsys):
    """Run a CLI's main in-process; return (status, stderr)."""
    status = main(argv)
    return status, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(BAD_FILES))
@pytest.mark.parametrize("cli", ["study", "train"])
def test_bad_yaml_files_are_refused_by_both_clis(cli, case, tmp_path, capsys):
    data, expected = BAD_FILES[case]
    path = tmp_path / "input.yaml"
    path.write_bytes(data)
    storage = tmp_path / "runs"
    if cli == "study":
        status, err = _run(study_main, ["--space", str(path), "--dry-run", "--storage", str(storage)], capsys)
    else:
        status, err = _run(train_main, ["--config", str(path), "--storage", str(storage)], capsys)
    assert status == 2, err
    assert str(path) in err and expected in err, err
    assert "Traceback" not in err and len(err) < 2000  # one message, never the expanded value
    assert not storage.exists()  # nothing written


@pytest.mark.parametrize("value, expected", [
    ("!!python/object/apply:os.system ['true']", "YAML tags are not allowed"),
    ("[1,", "invalid YAML"),
    ("{a: 1, a: 2}", "duplicate key"),
])
@pytest.mark.parametrize("cli", ["study", "train"])
def test_bad_set_values_are_refused_by_both_clis(cli, value, expected, tmp_path, capsys):
    storage = tmp_path / "runs"
    if cli == "study":
        argv = ["--space", "hardneg", "--dry-run", "--storage", str(storage), "--set", f"temperature={value}"]
        status, err = _run(study_main, argv, capsys)
    else:
        argv = ["--config", str(CONFIGS / "digits.yaml"), "--storage", str(storage), "--set", f"temperature={value}"]
        status, err = _run(train_main, argv, capsys)
    assert status == 2 and expected in err and "--set temperature" in err and "Traceback" not in err, err
    assert not storage.exists()


def test_valid_edge_cases_are_accepted(tmp_path):
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffdataset: digits\nlr: 1e-4\ndata_root: null\n# commentaire accentué\n".encode("utf-8"))
    cfg = TrainConfig.from_yaml(bom)
    assert cfg.dataset == "digits" and cfg.lr == pytest.approx(1e-4) and cfg.data_root is None
    # A few plain aliases are fine: only expansion beyond the bound is refused.
    assert safe_yaml.load_text("a: &x [1, 2]\nb: *x") == {"a": [1, 2], "b": [1, 2]}
    assert safe_yaml.load_text("") is None


def test_error_values_are_shortened():
    assert len(safe_yaml.short(list(range(10**6)))) < 100
    assert len(safe_yaml.short("x" * 10**6)) < 100
