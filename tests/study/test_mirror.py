"""study/mirror.py: the study's own files copied to and from remote storage (a ``file://`` URI here)."""

from __future__ import annotations

from study.mirror import STUDY_FILES, Mirror


def _local(tmp_path):
    local = tmp_path / "staging" / "study"
    local.mkdir(parents=True)
    (local / "study.json").write_text('{"name": "study"}')
    (local / "trials.csv").write_text("trial_id\nt0\n")
    (local / "optuna.db").write_bytes(b"\x00sqlite\xff")
    (local / "report" / "figures").mkdir(parents=True)
    (local / "report" / "report.md").write_text("# report")
    (local / "report" / "figures" / "a.png").write_bytes(b"png")
    (local / "notes.txt").write_text("not a study file")
    return local


def test_push_copies_the_study_files_and_the_report(tmp_path):
    local = _local(tmp_path)
    remote = tmp_path / "bucket"
    mirror = Mirror(f"file://{remote}/", "study", local)
    assert mirror.uri == f"file://{remote}/study" and not mirror.exists()
    mirror.push()
    copied = sorted(p.relative_to(remote / "study").as_posix() for p in (remote / "study").rglob("*") if p.is_file())
    assert copied == ["optuna.db", "report/figures/a.png", "report/report.md", "study.json", "trials.csv"]
    assert (remote / "study" / "optuna.db").read_bytes() == b"\x00sqlite\xff"
    assert mirror.exists() and mirror.exists("trials.csv") and not mirror.exists("history.csv")


def test_a_partial_push_copies_only_the_files_named(tmp_path):
    local = _local(tmp_path)
    remote = tmp_path / "bucket"
    Mirror(f"file://{remote}", "study", local).push(("optuna.db", "results.jsonl"))
    assert sorted(p.name for p in (remote / "study").iterdir()) == ["optuna.db"]  # no report, no missing file


def test_pull_brings_the_files_back_to_another_machine(tmp_path):
    local = _local(tmp_path)
    remote = tmp_path / "bucket"
    Mirror(f"file://{remote}", "study", local).push()
    (local / "trials.csv").write_text("changed later\n")
    elsewhere = tmp_path / "other" / "study"
    Mirror(f"file://{remote}", "study", elsewhere).pull()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["optuna.db", "study.json", "trials.csv"]
    assert (elsewhere / "trials.csv").read_text() == "trial_id\nt0\n"
    assert set(p.name for p in elsewhere.iterdir()) <= set(STUDY_FILES)


class _KilledMidWrite:
    """A file system whose writes stop half-way, as when the study is killed during a push."""

    def __init__(self, fs):
        self.fs = fs

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def open_output_stream(self, path):
        stream = self.fs.open_output_stream(path)

        class Cut:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                stream.close()

            def write(self, data):
                stream.write(data[:len(data) // 2])
                raise OSError("killed")

        return Cut()


def test_a_push_cut_short_leaves_the_last_whole_copy(tmp_path):
    local = _local(tmp_path)
    remote = tmp_path / "bucket"
    mirror = Mirror(f"file://{remote}", "study", local)
    mirror.push()
    assert not [p.name for p in (remote / "study").iterdir() if p.name.endswith(".part")]
    (local / "optuna.db").write_bytes(b"\x00sqlite, one trial more\xff")
    mirror.fs = _KilledMidWrite(mirror.fs)
    try:
        mirror.push(("optuna.db",))
    except OSError:
        pass
    assert (remote / "study" / "optuna.db").read_bytes() == b"\x00sqlite\xff"  # the last whole copy, not half a new one
    elsewhere = tmp_path / "other" / "study"
    Mirror(f"file://{remote}", "study", elsewhere).pull()
    assert (elsewhere / "optuna.db").read_bytes() == b"\x00sqlite\xff"
