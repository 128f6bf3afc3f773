"""The installed package: a wheel built from this checkout, installed into a fresh venv in a temporary directory,
runs its entry points from another directory, with the shipped configs found by name (issue #18)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from moco.catalog import CONFIG_DIR, entries, resolve, shipped_names
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(600)


def test_repo_configs_folder_is_the_shipped_one():
    """configs/ in a checkout links to the package's folder: the old paths and the names find the same files."""
    assert (ROOT / "configs").resolve() == CONFIG_DIR
    assert resolve("hardneg") == CONFIG_DIR / "hardneg.yaml" == resolve("hardneg.yaml")
    assert resolve("configs/digits.yaml").resolve() == CONFIG_DIR / "digits.yaml"
    assert resolve("nope") == Path("nope")
    kinds = {e.name: e.kind for e in entries()}
    assert kinds["hardneg"] == kinds["ablation"] == "space" and kinds["digits"] == kinds["fashion_mnist"] == "config"
    assert all(e.description and "\n" not in e.description for e in entries())


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the venv's bin/, an empty working directory elsewhere): the wheel installed without its dependencies, which
    come from this interpreter's site-packages (a .pth line), so torch and Ray need not be reinstalled."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheels = tmp / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(wheels), str(ROOT)], capture_output=True, text=True, timeout=300,
                           cwd=tmp)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    wheel = next(wheels.glob("mocostudy-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"moco/configs/{n}.yaml" for n in shipped_names()} <= set(names)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                              "--no-index", str(wheel)], capture_output=True, text=True, timeout=300, env=_clean_env())
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    assert (venv / "bin" / "mocostudy").is_file(), install.stdout[-2000:]
    # Then the dependencies (not this project: its editable finder is a .pth that a path line does not run).
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return venv / "bin", elsewhere


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH (the test runner's points at this checkout, which a build leaves an egg-info in)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(bindir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(bindir / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=_clean_env())


def test_installed_package_is_the_wheel(installed):
    bindir, cwd = installed
    proc = _run(bindir, cwd, "python", "-c", "import moco.catalog as c, study.run; print(c.CONFIG_DIR)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(bindir.parent) in proc.stdout and str(ROOT) not in proc.stdout


def test_installed_mocostudy_lists_and_plans_the_shipped_space(installed):
    bindir, cwd = installed
    listing = _run(bindir, cwd, "mocostudy", "--list")
    assert listing.returncode == 0, listing.stderr[-2000:]
    for entry in entries():
        assert f"{entry.name}" in listing.stdout and entry.description in listing.stdout
    plan = _run(bindir, cwd, "mocostudy", "--space", "hardneg.yaml", "--dry-run")
    assert plan.returncode == 0, plan.stdout[-2000:] + plan.stderr[-2000:]
    assert "dry run: nothing started" in plan.stdout and "base       fashion_mnist" in plan.stdout
    assert not (cwd / "runs").exists()


def test_installed_mocostudy_takes_a_users_space_on_a_shipped_config(installed):
    bindir, cwd = installed
    (cwd / "mine.yaml").write_text("base: {config: digits, overrides: {compute_budget: 2}}\n"
                                   "search:\n  temperature: {type: float, low: 0.1, high: 0.3}\n"
                                   "study: {num_samples: 2, grace_period: 1}\n")
    plan = _run(bindir, cwd, "mocostudy", "--space", "mine.yaml", "--dry-run")
    assert plan.returncode == 0, plan.stdout[-2000:] + plan.stderr[-2000:]
    assert "base       digits" in plan.stdout and "2 trials" in plan.stdout


def test_installed_help_names_the_installed_programs(installed):
    bindir, cwd = installed
    for program in ("mocostudy", "moco-train"):
        proc = _run(bindir, cwd, program, "--help")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.startswith(f"usage: {program} ") and "examples:" in proc.stdout
        assert "study/run.py [" not in proc.stdout and "Ray Train edge" not in proc.stdout
        for line in proc.stdout.replace("\n                        ", " ").splitlines():
            assert line.count("(default") <= 1, line
