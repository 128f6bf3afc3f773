"""Bad input to the report (issue #19, classes 1 and 10): a study directory whose files are not UTF-8 text, or are
malformed, is refused — exit 2, one message naming the file and the key or column, no traceback, nothing written —
and valid edge cases are reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from analysis.report import main
from tests.analysis.conftest import make_search_study


def _recode(name: str, codec: str, accents: bool = False) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        text = (path / name).read_text()
        (path / name).write_bytes((text.replace("tolerated", "tolérée") if accents else text).encode(codec))
    return change


def _trials(edit: Callable[[pd.DataFrame], pd.DataFrame], name: str = "trials.csv") -> Callable[[Path], None]:
    def change(path: Path) -> None:
        edit(pd.read_csv(path / name, dtype=str)).to_csv(path / name, index=False)
    return change


def _meta(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        meta = json.loads((path / "study.json").read_text())
        edit(meta)
        (path / "study.json").write_text(json.dumps(meta))
    return change


def _set(frame: pd.DataFrame, row: int, column: str, value: str) -> pd.DataFrame:
    frame.loc[row, column] = value
    return frame


# name -> (change to a valid study directory, file named in the message, text the message must hold)
BAD = {
    "1 trials.csv in UTF-16": (_recode("trials.csv", "utf-16"), "trials.csv", "not UTF-8"),
    "1 trials.csv in Latin-1": (_recode("trials.csv", "latin-1", accents=True), "trials.csv", "not UTF-8"),
    "1 history.csv binary": (lambda p: (p / "history.csv").write_bytes(bytes(range(256)) * 8), "history.csv",
                             "not UTF-8"),
    "1 study.json in UTF-16": (_recode("study.json", "utf-16"), "study.json", "not UTF-8"),
    "1 study.json with NUL bytes": (lambda p: (p / "study.json").write_bytes(b"{}\x00\x00"), "study.json", "NUL"),
    "10 metric column with text": (_trials(lambda t: _set(t, 1, "val_knn_top1", "high")), "trials.csv",
                                   "val_knn_top1"),
    "10 duplicate trial ids": (_trials(lambda t: pd.concat([t, t.iloc[[1, 1]]])), "trials.csv", "t001"),
    "10 space not a mapping": (_meta(lambda m: m.update(space=["temperature"])), "study.json", "space"),
    "10 space bound not a number": (_meta(lambda m: m["space"]["temperature"].update(low="abc")), "study.json",
                                    "space.temperature.low"),
    "10 space type unknown": (_meta(lambda m: m["space"]["queue_size"].update(type="list")), "study.json",
                              "space.queue_size.type"),
    "10 choices not a list": (_meta(lambda m: m["space"]["queue_size"].update(choices=5)), "study.json",
                              "space.queue_size.choices"),
    "10 metric not text": (_meta(lambda m: m.update(metric=["val_knn_top1"])), "study.json", "metric"),
    "10 trials.csv without status": (_trials(lambda t: t.drop(columns=["status"])), "trials.csv", "status"),
    "10 trials.csv without trial_id": (_trials(lambda t: t.drop(columns=["trial_id"])), "trials.csv", "trial_id"),
    "10 history.csv without epoch": (_trials(lambda t: t.drop(columns=["epoch"]), "history.csv"), "history.csv",
                                     "epoch"),
    "10 epoch with text": (_trials(lambda t: _set(t, 0, "epoch", "first"), "history.csv"), "history.csv", "epoch"),
    "10 trial_number with text": (_trials(lambda t: _set(t, 2, "trial_number", "two")), "trials.csv",
                                  "trial_number"),
    "10 searched parameter with text": (_trials(lambda t: _set(t, 2, "param_temperature", "warm")), "trials.csv",
                                        "param_temperature"),
}


@pytest.fixture(scope="module")
def valid_study(tmp_path_factory) -> Path:
    return make_search_study(tmp_path_factory.mktemp("valid"), n=8)


def _copy(study: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(study, tmp_path / "study"))


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_study_directory_is_refused(case, valid_study, tmp_path, capsys):
    change, name, expected = BAD[case]
    study = _copy(valid_study, tmp_path)
    change(study)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    status = main([str(study), "--format", "md", "--resamples", "0"])
    err = capsys.readouterr().err
    assert status == 2, (case, err)
    assert str(study / name) in err and expected in err, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def _bom_and_accents(path: Path) -> None:
    _recode("trials.csv", "utf-8", accents=True)(path)
    for name in ("study.json", "trials.csv", "history.csv"):
        (path / name).write_bytes(b"\xef\xbb\xbf" + (path / name).read_bytes())


def _no_history_no_space(path: Path) -> None:
    (path / "history.csv").unlink()
    _meta(lambda m: m.update(space=None))(path)


GOOD = {
    "UTF-8 BOM in every file, accents in a text column": _bom_and_accents,
    "nan and inf written in the metric column": _trials(lambda t: _set(_set(t, 3, "val_knn_top1", "nan"), 4,
                                                                       "val_knn_top1", "inf")),
    "no history.csv, space null in study.json": _no_history_no_space,
}


@pytest.mark.parametrize("case", sorted(GOOD))
def test_valid_edge_cases_are_reported(case, valid_study, tmp_path, capsys):
    study = _copy(valid_study, tmp_path)
    GOOD[case](study)
    status = main([str(study), "--format", "md", "--resamples", "0"])
    assert status == 0, capsys.readouterr().err
    assert (study / "report" / "report.md").is_file()
