"""Where a study's Optuna trials live: ``study/run.py --optuna-storage URL``.

- no URL (the default): SQLite in the study folder, ``<study>/optuna.db`` (with ``s3://``/``gs://``/``file://``
  storage it is staged locally and mirrored with the study's other files, study/mirror.py);
- any SQLAlchemy URL that Optuna's ``RDBStorage`` accepts, e.g. ``postgresql://user:password@host:5432/db``
  (driver psycopg 3, SQLAlchemy 2.1's default for postgresql://; a dev dependency), ``mysql+pymysql://...``
  (install the driver yourself) or
  ``sqlite:////abs/path.db`` (a relative SQLite path is made absolute against the directory the study starts in);
- ``journal:///abs/path/study.log``: Optuna's ``JournalStorage`` with a ``JournalFileBackend``, an append-only file
  that, unlike SQLite, is safe on NFS; the path must be absolute, its folder must exist.

Several studies may share one database: each is its own Optuna study, named after the study (``--name``). Checked
once, before Ray starts (:func:`check_url` for the form, :func:`open_storage` connects); messages never show a
password (:func:`display`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

JOURNAL = "journal"
DEFAULT_FILE = "optuna.db"


class OptunaStorageError(Exception):
    """An --optuna-storage URL that is malformed, has no driver here, or does not answer; exit status 2."""


def display(url: str | None) -> str:
    """The URL with its password replaced by ``***`` (for messages, study.json and the printed plan)."""
    if url is None:
        return f"sqlite ({DEFAULT_FILE} in the study folder)"
    if url.startswith(f"{JOURNAL}:"):
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL that does not parse is shown without whatever follows its scheme
        return url.split("://", 1)[0] + "://..."


def check_url(url: str | None) -> str | None:
    """The URL to use, validated for its form (nothing is contacted): ``None`` for the default SQLite file; a
    relative SQLite path made absolute. :class:`OptunaStorageError` otherwise."""
    if url is None:
        return None
    url = url.strip()
    if not url:
        raise OptunaStorageError("--optuna-storage '': a SQLAlchemy URL (postgresql://..., sqlite:////path.db) or "
                                 "journal:///path/to/file.log; leave it out for optuna.db in the study folder")
    if url.startswith(f"{JOURNAL}:"):
        return _check_journal(url)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise OptunaStorageError(f"--optuna-storage {display(url)}: not a database URL; use a SQLAlchemy URL "
                                 "(postgresql://user:password@host:5432/db, mysql+pymysql://..., "
                                 "sqlite:////path.db) or journal:///path/to/file.log") from None
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise OptunaStorageError(f"--optuna-storage {display(url)}: unknown database kind "
                                 f"{parsed.drivername!r}; postgresql, mysql and sqlite are what Optuna "
                                 "supports") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise OptunaStorageError(f"--optuna-storage {url}: an in-memory SQLite database would be lost when the "
                                     "study stops; give a file: sqlite:////path/to/optuna.db")
        path = Path(database).expanduser()
        if not path.is_absolute():
            url = parsed.set(database=str(path.resolve())).render_as_string(hide_password=False)
    return url


def _check_journal(url: str) -> str:
    parsed = urlparse(url)
    path = parsed.path
    if parsed.netloc or not path.startswith("/") or url.startswith(f"{JOURNAL}:/") and not url.startswith(
            f"{JOURNAL}:///"):
        raise OptunaStorageError(f"--optuna-storage {url}: a journal file is given by its absolute path, "
                                 "journal:///path/to/study.log (three slashes)")
    if Path(path).is_dir():
        raise OptunaStorageError(f"--optuna-storage {url}: {path} is a folder; name the journal file in it")
    if not Path(path).parent.is_dir():
        raise OptunaStorageError(f"--optuna-storage {url}: no folder {Path(path).parent} for the journal file")
    return url


def resolve(url: str | None, run_dir: Path) -> str:
    """The URL the searcher opens: the default is ``sqlite:///<run_dir>/optuna.db``."""
    return url if url is not None else f"sqlite:///{Path(run_dir) / DEFAULT_FILE}"


def open_storage(url: str):
    """An Optuna storage for ``url`` (as returned by :func:`check_url`/:func:`resolve`); connecting (and creating
    Optuna's tables in an empty database) happens here. :class:`OptunaStorageError` when it cannot."""
    import optuna

    if url.startswith(f"{JOURNAL}:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = urlparse(url).path
        try:
            return JournalStorage(JournalFileBackend(path))
        except OSError as err:
            raise OptunaStorageError(f"--optuna-storage {url}: cannot open {path}: {err.strerror or err}") from None
    try:
        return optuna.storages.RDBStorage(url)
    except ImportError as err:
        from sqlalchemy.engine import make_url

        driver = make_url(url).drivername
        hint = " (pip install 'psycopg[binary]')" if driver.startswith("postgresql") else ""
        raise OptunaStorageError(f"--optuna-storage {display(url)}: the database driver for {driver!r} is not "
                                 f"installed here{hint}: {err}") from None
    except Exception as err:  # noqa: BLE001 - sqlalchemy's OperationalError and kin: the server's own words
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()
        raise OptunaStorageError(f"--optuna-storage {display(url)}: cannot open the database: "
                                 f"{reason[0] if reason else type(err).__name__}") from None


def for_study(given: str | None, recorded: str | None, resuming: bool) -> str | None:
    """The storage URL of a run: ``given`` (checked), else on resume the one ``study.json`` recorded (``recorded``,
    password hidden: then it must be given again), else the default (``None``)."""
    if given is not None or not resuming or recorded is None:
        return check_url(given)
    if "***" in recorded:
        raise OptunaStorageError(f"--resume: this study keeps its Optuna trials in {recorded}; give that URL again "
                                 "with its password: --optuna-storage URL")
    return check_url(recorded)


def masked_argv(argv: list[str]) -> list[str]:
    """``argv`` with the value of ``--optuna-storage`` shown by :func:`display` (no password in study.json)."""
    out, hide = [], False
    for arg in argv:
        if hide:
            arg, hide = display(arg), False
        elif arg == "--optuna-storage":
            hide = True
        elif arg.startswith("--optuna-storage="):
            arg = "--optuna-storage=" + display(arg.split("=", 1)[1])
        out.append(arg)
    return out
