#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment with every Python dependency, and (where apt-get is
# available and we are root) Debian's Fashion-MNIST package, the default study's dataset, and PostgreSQL (for a test).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing Debian's dataset-fashion-mnist"
  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
    || echo "[setup] warning: could not install dataset-fashion-mnist; set data_root or MOCO_DATA_DIR to Fashion-MNIST"
fi

# PostgreSQL's server binaries (initdb, pg_ctl) for the test of --optuna-storage postgresql://...; the test starts a
# throw-away server of its own and is skipped, saying why, where they are missing.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1 \
    && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[setup] installing Debian's postgresql (for the Optuna storage test)"
  apt-get install -y -q postgresql >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1; } \
    || echo "[setup] warning: could not install postgresql; the PostgreSQL storage test will be skipped"
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "[setup] installing the project and its dependencies into .venv (torch 2.14.1, torchvision 0.29.1, ray 2.60)"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,bench]"
.venv/bin/python -c "import torch, torchvision, ray, optuna, pandas, matplotlib; print('[setup] ok: torch', torch.__version__, '| ray', ray.__version__, '| optuna', optuna.__version__)"
