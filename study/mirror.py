"""The study's own files on remote storage (``s3://``, ``gs://``, ``file://`` URIs).

Ray Tune and Train write their files to the storage URI themselves. The study's own files (``study.json``,
``trials.csv``, ``history.csv``, ``best_config.yaml``, the trial record, the Optuna database and the report) are
written to a local staging folder, ``runs/.remote/<name>`` under the working directory, and copied to
``<storage>/<name>/``
after every update; ``--resume`` first copies them back, so a study can be resumed from another machine.

A push never leaves a half-written file in the storage, whenever the study is killed: on a file system each file is
written beside its place and renamed into it; object stores (S3, GCS) publish an object only once its upload is
complete.
"""

from __future__ import annotations

from pathlib import Path

STUDY_FILES = ("study.json", "trial_status.json", "results.jsonl", "trials.csv", "history.csv", "best_config.yaml",
               "optuna.db", "confirm.json", "confirm.csv")


class Mirror:
    """Copies the study's own files between a local folder and ``<uri>/<name>``."""

    def __init__(self, uri: str, name: str, local: Path):
        import pyarrow.fs

        self.fs, root = pyarrow.fs.FileSystem.from_uri(uri.rstrip("/"))
        self.remote = f"{root.rstrip('/')}/{name}"
        self.uri = f"{uri.rstrip('/')}/{name}"
        self.local = local

    def exists(self, filename: str = "study.json") -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(f"{self.remote}/{filename}").type == pyarrow.fs.FileType.File

    def pull(self) -> None:
        """Copy the study's files from the remote folder into the local one (for ``--resume``)."""
        self.local.mkdir(parents=True, exist_ok=True)
        for filename in STUDY_FILES:
            if self.exists(filename):
                with self.fs.open_input_stream(f"{self.remote}/{filename}") as src:
                    (self.local / filename).write_bytes(src.read())

    def _write(self, filename: str, data: bytes) -> None:
        target = f"{self.remote}/{filename}"
        local = self.fs.type_name == "local"
        part = f"{self.remote}/.{filename}.part" if local else target
        with self.fs.open_output_stream(part) as dst:
            dst.write(data)
        if local:
            self.fs.move(part, target)  # a rename: atomic

    def push(self, files: tuple[str, ...] = STUDY_FILES) -> None:
        """Copy the local study files (and the report, when there is one) to the remote folder."""
        import pyarrow.fs

        self.fs.create_dir(self.remote, recursive=True)
        for filename in files:
            path = self.local / filename
            if path.is_file():
                self._write(filename, path.read_bytes())
        if files == STUDY_FILES and (self.local / "report").is_dir():
            pyarrow.fs.copy_files(str(self.local / "report"), f"{self.remote}/report",
                                  destination_filesystem=self.fs)
