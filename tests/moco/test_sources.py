"""moco.sources: locating data without importing torch, so the study driver stays light."""

import subprocess
import sys
from pathlib import Path

from moco import sources
from moco.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent.parent


def test_study_driver_modules_do_not_import_torch():
    """Every trial process imports torch anyway; the driver does not need to (about 370 MB of PSS saved)."""
    code = ("import sys; sys.argv = ['run.py']; import study.run, study.trial, study.search, study.results, "
            "study.confirm, study.confirm_run, moco.sources, moco.faults; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_locate_finds_a_data_root_and_skips_bundled_digits(tmp_path):
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    for name in sources.FASHION_FILES:
        (d / (name + ".gz")).write_bytes(b"")
    assert sources.locate(TrainConfig(data_root=str(tmp_path))) == d
    assert sources.locate(TrainConfig(dataset="digits")) is None
