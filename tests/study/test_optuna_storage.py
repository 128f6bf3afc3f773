"""--optuna-storage (study/optuna_storage.py): URL forms, passwords never shown, refusals with exit 2; a searcher
restored from Tune's pickles after its database moved (resume from another working directory); and real mini
studies on a journal file and on a PostgreSQL server started by the test."""

from __future__ import annotations

import glob
import json
import os
import pickle
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from study import optuna_storage as ost
from tests.conftest import MINI_SPACE, ROOT, kill_study_after_first_trial, study_command


# --- forms and refusals (no Ray) ----------------------------------------------------------------------------------
def test_urls_are_checked_for_their_form(tmp_path, monkeypatch):
    assert ost.check_url(None) is None
    journal = f"journal://{tmp_path}/study.log"
    assert ost.check_url(journal) == journal
    assert ost.check_url("postgresql://u:pw@db:5432/studies") == "postgresql://u:pw@db:5432/studies"
    monkeypatch.chdir(tmp_path)  # a relative SQLite path is pinned to where the study starts
    assert ost.check_url("sqlite:///o.db") == f"sqlite:///{tmp_path}/o.db"
    for bad, why in (("", "a SQLAlchemy URL"), ("nonsense", "not a database URL"),
                     ("oracle+nope://x/y", "unknown database kind"), ("sqlite://", "in-memory"),
                     ("journal://rel/study.log", "absolute path"), ("journal:study.log", "absolute path"),
                     (f"journal://{tmp_path}", "is a folder"), (f"journal://{tmp_path}/no/such.log", "no folder")):
        with pytest.raises(ost.OptunaStorageError, match=why):
            ost.check_url(bad)


def test_passwords_are_never_shown(tmp_path):
    url = "postgresql://me:s3cret@db:5432/studies"
    assert ost.display(url) == "postgresql://me:***@db:5432/studies"
    assert ost.masked_argv(["run.py", "--optuna-storage", url, f"--optuna-storage={url}"]) == [
        "run.py", "--optuna-storage", "postgresql://me:***@db:5432/studies",
        "--optuna-storage=postgresql://me:***@db:5432/studies"]
    # On resume the recorded URL is used, unless its password was hidden: then it must be given again.
    assert ost.for_study(None, f"journal://{tmp_path}/s.log", resuming=True) == f"journal://{tmp_path}/s.log"
    with pytest.raises(ost.OptunaStorageError, match="give that URL again with its password"):
        ost.for_study(None, "postgresql://me:***@db:5432/studies", resuming=True)
    assert ost.for_study(url, "postgresql://me:***@db:5432/studies", resuming=True) == url
    assert ost.for_study(None, None, resuming=True) is None


def test_an_unreachable_database_is_refused_with_exit_2_before_ray(tmp_path):
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://me:s3cret@127.0.0.1:{port}/studies"
    proc = subprocess.run(study_command("--space", str(MINI_SPACE), "--storage", str(tmp_path), "--name", "pg",
                                        "--optuna-storage", url), cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot open the database" in proc.stderr and "me:***@" in proc.stderr
    assert "s3cret" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


# --- resume after the database moved (no Ray: Tune's pickles, as Tuner.restore reads them) ------------------------
def test_a_restored_searcher_uses_this_runs_database_not_the_pickled_path(tmp_path):
    """Tune pickles the searcher (tuner.pkl, searcher-state-*.pkl) with its storage, whose SQLite path is absolute:
    after the study folder moves (a new working directory, a cluster restart), the searcher must write to the
    database where it is now, not re-create one at the old path."""
    from study.search import make_searcher, use_storage
    from study.space import load_space

    space = load_space(str(MINI_SPACE))
    old, new = tmp_path / "old" / "s", tmp_path / "new" / "s"
    old.mkdir(parents=True)
    searcher = make_searcher(space, old)
    first = searcher.suggest("t0")  # the baseline, in flight when the study stopped
    pickled = pickle.dumps(searcher)  # tuner.pkl
    searcher.save(str(tmp_path / "searcher-state.pkl"))  # searcher-state-*.pkl
    shutil.move(str(old.parent), str(new.parent))

    use_storage("s", ost.open_storage(ost.resolve(None, new)))
    restored = pickle.loads(pickled)
    restored.restore(str(tmp_path / "searcher-state.pkl"))
    restored.on_trial_complete("t0", {"val_knn_top1": 50.0, "epoch": 4, "compute": 4})
    assert restored.suggest("t1") and first
    assert not old.exists(), "the old path was re-created"
    import optuna

    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{new / 'optuna.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING"] and trials[0].value == 50.0


def test_a_searcher_pickled_whole_by_an_earlier_version_is_attached_too(tmp_path):
    """Studies started before the re-attach pickled the searcher with its live storage: resuming them re-attaches it
    to this run's storage as well."""
    from study.search import EpochAwareOptunaSearch, make_searcher, use_storage
    from study.space import load_space

    run_dir = tmp_path / "old"
    run_dir.mkdir()
    searcher = make_searcher(load_space(str(MINI_SPACE)), run_dir)
    searcher.suggest("t0")
    state = dict(searcher.__dict__)  # what OptunaSearch.save pickled
    restored = EpochAwareOptunaSearch.__new__(EpochAwareOptunaSearch)
    use_storage("old", ost.open_storage(ost.resolve(None, run_dir)))
    restored.__setstate__(state)
    assert restored._ot_study is not None and restored._ot_study._storage is not searcher._ot_study._storage
    restored.on_trial_complete("t0", {"val_knn_top1": 40.0, "epoch": 4, "compute": 4})
    assert restored._ot_study.trials[0].value == 40.0


# --- real mini studies --------------------------------------------------------------------------------------------
TINY = ["--num-samples", "2", "--max-concurrent", "1", "--no-report"]


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    return Path(found[-1]).parent if found[-1] else None


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL server on a free port in a temp folder (as the ``postgres`` user when run as root,
    since initdb refuses root): its URL. Skipped, saying why, without the binaries or the driver."""
    pytest.importorskip("psycopg", reason="psycopg (a dev dependency) is not installed")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (scripts/setup.sh installs Debian's postgresql "
                    "where apt-get is available as root)")
    root = tempfile.mkdtemp(prefix="mocopg", dir="/tmp")
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            shutil.chown(root, "postgres")
        except (LookupError, PermissionError):
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = f"{root}/data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", data, "-U", "moco", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", data, "-l", f"{root}/log", "-w", "-t", "60", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="moco", dbname="postgres", autocommit=True) as conn:
            conn.execute("create database studies")
        yield f"postgresql://moco@127.0.0.1:{port}/studies"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_a_study_keeps_its_trials_in_the_given_storage(kind, tmp_path, request):
    import optuna

    url = f"journal://{tmp_path}/optuna.log" if kind == "journal" else request.getfixturevalue("postgres")
    proc = subprocess.run(study_command("--space", str(MINI_SPACE), "--storage", str(tmp_path / "runs"),
                                        "--name", f"st-{kind}", "--optuna-storage", url, *TINY),
                          cwd=ROOT, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / f"st-{kind}"
    assert not (run_dir / "optuna.db").exists()
    assert json.loads((run_dir / "study.json").read_text())["optuna_storage"] == url
    storage = ost.open_storage(url)
    trials = optuna.load_study(study_name=f"st-{kind}", storage=storage).trials
    assert len(trials) == 2 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}


@pytest.mark.ray
@pytest.mark.timeout(900)
def test_resume_from_another_working_directory(tmp_path):
    """file:// storage: the study's files are staged in <cwd>/runs/.remote/<name>; after the driver is killed and
    that working directory is gone, --resume from another one continues the same Optuna study."""
    storage, first, second = tmp_path / "studies", tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    cmd = study_command("--space", str(MINI_SPACE), "--storage", storage.as_uri(), "--name", "moved", *TINY)
    kill_study_after_first_trial(cmd, first, storage / "moved", timeout=500)
    shutil.rmtree(first)  # the old working directory is gone (a new node, a new checkout)

    resumed = subprocess.run(cmd + ["--resume"], cwd=second, capture_output=True, text=True, timeout=800)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert not first.exists(), "the resumed study wrote into the old working directory"
    import optuna

    trials = optuna.load_study(study_name="moved", storage=f"sqlite:///{storage / 'moved' / 'optuna.db'}").trials
    assert len(trials) == 2 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert json.loads((storage / "moved" / "study.json").read_text())["status"] == "finished"
