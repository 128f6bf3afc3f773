"""One typed configuration for a training run: every knob, its default, and its validation.

A ``TrainConfig`` is flat on purpose: one key per knob, the same key in YAML, in ``--set key=value`` on the command
line and in a study's search space. It is validated in one place (:meth:`TrainConfig.validate`), and every error
names the source (file), the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from moco.safe_yaml import YamlError, load_file, load_value, short
from moco.vocabulary import SPACE_SECTIONS

DATASETS = ("fashion_mnist", "digits", "cifar10", "cifar100", "stl10", "imagefolder")
BACKBONES = ("convnet", "resnet18", "resnet50")
BN_MODES = ("split", "shuffle", "sync", "none")
NORMS = ("batch", "group", "none")
MOMENTUM_SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")  #: encoder compute precision (moco/precision.py resolves auto)
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  #: layout of the encoders' 4-d tensors
#: negative-sampling strategies (moco/negatives.py) and the keys that only they read
NEGATIVES = {"select": ("hard_negative_ratio",), "hcl": ("hcl_beta", "hcl_tau_plus"),
             "ring": ("ring_low", "ring_high"), "mochi": ("mochi_hardest", "mochi_mixes", "mochi_query_mixes")}


class ConfigError(ValueError):
    """A configuration value is not allowed. The message names the source, key, value and the allowed values."""

    def __init__(self, key: str, value: Any, allowed: str, source: str | None = None):
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key} = {short(value)} is not allowed: {allowed}")
        self.key, self.value, self.allowed, self.source = key, value, allowed, source


@dataclass
class TrainConfig:
    """Every setting of one training run. Defaults are the CPU Fashion-MNIST setup of ``configs/fashion_mnist.yaml``,
    except ``mlp_hidden`` (256 in the file) and ``knn_val_size`` (5000 in the file)."""

    # --- data -------------------------------------------------------------------------------------------------
    dataset: str = "fashion_mnist"  #: one of DATASETS
    data_root: str | None = None  #: where to look first; then $MOCO_DATA_DIR, then Debian's package location
    download: bool = False  #: let torchvision download the dataset when it is missing (needs internet)
    val_size: int = 5000  #: images held out of the training set for validation (seeded split)
    train_subset: int | None = None  #: use only this many training images (None = all), seeded by split_seed
    split_seed: int = 0  #: seed of the validation split and training subset (the same for every trial and seed)
    image_size: int | None = None  #: resize images to this side (None = the dataset's native size)
    loader_workers: int = 2  #: DataLoader worker processes for streamed (large) datasets

    # --- model ------------------------------------------------------------------------------------------------
    backbone: str = "convnet"  #: one of BACKBONES
    width: int = 32  #: convnet base channel count
    norm: str = "batch"  #: convnet normalisation: batch, group (split-independent) or none
    pool_grid: int = 1  #: convnet: average-pool the last map to a g x g grid, features 4 * width * g^2 (1 = global)
    cifar_stem: bool = True  #: ResNet: 3x3 stride-1 conv1 and no max-pool (for 32x32 images)
    feature_dim: int = 128  #: output dimension of the MLP head (the contrastive embedding)
    mlp_hidden: int = 512  #: hidden width of the 2-layer MLP head

    # --- MoCo -------------------------------------------------------------------------------------------------
    queue_size: int = 4096  #: K, number of past keys used as negatives
    momentum: float = 0.99  #: m, EMA coefficient of the key encoder
    momentum_schedule: str = "constant"  #: constant m, or cosine from m to 1 over training
    temperature: float = 0.2  #: tau
    dual_view_weight: float = 1.0  #: lambda; 1 = one-way MoCo v2, 0.5 = balanced symmetric loss
    hard_negative_ratio: float = 1.0  #: rho; keep the hardest ceil(rho * K') negatives per query (1 = all)
    false_negative_threshold: float = 1.0  #: delta; drop negatives with cosine > delta (1 = off)
    selection_warmup_epochs: int = 0  #: epochs with rho = 1 and no filtering before selection starts
    # Negative sampling (moco/negatives.py). Each strategy's keys default to a literature setting, not its identity.
    negatives: str = "select"  #: select (top-rho + delta), hcl, ring or mochi; the threshold delta applies to all
    hcl_beta: float = 1.0  #: HCL hardness beta >= 0 (identity 0); Robinson et al.'s default 1
    hcl_tau_plus: float = 0.1  #: HCL class prior tau+ in [0, 1) (identity 0); Robinson et al.'s default 0.1
    ring_low: float = 0.001  #: ring: drop the hardest ceil(rho_lo N) (identity 0); hardest 0.1 % harmful (Cai et al.)
    ring_high: float = 0.05  #: ring: keep ranks to ceil(rho_hi N) (identity 1); hardest 5 % sufficient (Cai et al.)
    mochi_hardest: int = 1024  #: MoCHi N_h, mixed from the N_h hardest; (N_h, s, s') = (1024, 512, 256): Kalantidis
    mochi_mixes: int = 512  #: MoCHi s_mix, mixes of two hard negatives (identity 0)
    mochi_query_mixes: int = 256  #: MoCHi s_q, mixes of the query and a hard negative (identity 0)
    bn_mode: str = "split"  #: split (SplitBatchNorm, one device), shuffle (ShuffleBN, DDP), sync (SyncBN), none
    bn_splits: int = 8  #: number of splits for SplitBatchNorm

    # --- optimisation -----------------------------------------------------------------------------------------
    epochs: int = 10  #: training epochs; derived from compute_budget when that is set
    compute_budget: int | None = None  #: passes of the training split through the query encoder (see .views)
    batch_size: int = 256  #: global batch, split across workers
    lr: float = 0.06  #: SGD learning rate at batch_size (not rescaled)
    weight_decay: float = 5e-4
    sgd_momentum: float = 0.9
    warmup_epochs: int = 1  #: linear learning-rate warm-up, then cosine decay to 0

    # --- evaluation -------------------------------------------------------------------------------------------
    knn_k: int = 200
    knn_t: float = 0.1
    knn_every: int = 1  #: run the validation kNN monitor every N epochs (and always at the last epoch)
    knn_bank_size: int = 10000  #: training images in the kNN memory bank during training (bounded; full at end)
    knn_val_size: int = 2000  #: validation images scored by the per-epoch monitor (full set at the end)
    linear_probe: bool = False  #: train a linear probe on frozen features at the end (test_linear_top1)
    raw_reference: bool = True  #: score raw pixels with the same protocols (first monitor and the final evaluation)
    probe_epochs: int = 20

    # --- run --------------------------------------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"  #: auto (cuda when available), cpu or cuda
    precision: str = "auto"  #: encoders' matmuls/convs: fp32, bf16 (autocast), auto (moco/precision.py decides)
    memory_format: str = "auto"  #: channels_last, contiguous, or auto (moco/precision.py decides)
    checkpoint_every: int = 1  #: epochs between checkpoints (and always at the end)
    keep_checkpoints: int = 2  #: newest checkpoints kept
    final_eval: bool = True  #: full validation and test kNN at the end

    # ----------------------------------------------------------------------------------------------------------
    def validate(self, source: str | None = None) -> "TrainConfig":
        """Check every field; raise :class:`ConfigError` naming the first bad key. Returns ``self``."""

        def need(ok: bool, key: str, allowed: str) -> None:
            if not ok:
                raise ConfigError(key, getattr(self, key), allowed, source)

        _check_types(self, source)
        need(self.dataset in DATASETS, "dataset", f"one of {', '.join(DATASETS)}")
        need(self.val_size >= 0, "val_size", "an integer >= 0")
        need(self.train_subset is None or self.train_subset > 0, "train_subset", "null or an integer > 0")
        need(self.image_size is None or 8 <= self.image_size <= 1024, "image_size", "null or an integer in [8, 1024]")
        need(self.loader_workers >= 0, "loader_workers", "an integer >= 0")
        need(self.backbone in BACKBONES, "backbone", f"one of {', '.join(BACKBONES)}")
        need(self.width >= 1, "width", "an integer >= 1")
        need(self.norm in NORMS, "norm", f"one of {', '.join(NORMS)}")
        need(self.pool_grid >= 1, "pool_grid", "an integer >= 1")
        need(self.pool_grid == 1 or self.backbone == "convnet", "pool_grid",
             f"1 with backbone = {self.backbone} (ResNets pool globally; a grid is a convnet option)")
        need(self.feature_dim >= 1, "feature_dim", "an integer >= 1")
        need(self.mlp_hidden >= 1, "mlp_hidden", "an integer >= 1")
        need(self.queue_size >= 1, "queue_size", "an integer >= 1")
        need(0.0 <= self.momentum <= 1.0, "momentum", "a number in [0, 1]")
        need(self.momentum_schedule in MOMENTUM_SCHEDULES, "momentum_schedule",
             f"one of {', '.join(MOMENTUM_SCHEDULES)}")
        need(self.temperature > 0 and math.isfinite(self.temperature), "temperature", "a number > 0")
        need(0.0 <= self.dual_view_weight <= 1.0, "dual_view_weight", "a number in [0, 1]")
        need(0.0 < self.hard_negative_ratio <= 1.0, "hard_negative_ratio", "a number in (0, 1]")
        need(-1.0 < self.false_negative_threshold <= 1.0, "false_negative_threshold", "a number in (-1, 1]")
        need(self.selection_warmup_epochs >= 0, "selection_warmup_epochs", "an integer >= 0")
        self._validate_negatives(need)
        need(self.bn_mode in BN_MODES, "bn_mode", f"one of {', '.join(BN_MODES)}")
        need(self.bn_splits >= 1, "bn_splits", "an integer >= 1")
        need(self.bn_mode != "split" or self.batch_size % self.bn_splits == 0, "bn_splits",
             f"a divisor of batch_size = {self.batch_size} (SplitBatchNorm splits every batch into bn_splits parts)")
        need(self.compute_budget is None or self.compute_budget >= 1, "compute_budget", "null or an integer >= 1")
        if self.compute_budget is not None:
            need(self.compute_budget % self.views == 0, "compute_budget",
                 f"a multiple of {self.views}: with dual_view_weight = {self.dual_view_weight} each epoch costs "
                 f"{self.views} passes, so the budget must hold whole epochs")
            self.epochs = self.compute_budget // self.views
        need(self.epochs >= 1, "epochs", "an integer >= 1")
        need(self.batch_size >= 2, "batch_size", "an integer >= 2")
        # Every enqueue writes the keys of one global batch (both views with the dual-view loss).
        keys_per_step = self.batch_size * self.views
        need(self.queue_size >= keys_per_step, "queue_size",
             f"at least one global batch of keys ({keys_per_step} = batch_size x views per step)")
        need(self.lr > 0, "lr", "a number > 0")
        need(self.weight_decay >= 0, "weight_decay", "a number >= 0")
        need(0.0 <= self.sgd_momentum < 1.0, "sgd_momentum", "a number in [0, 1)")
        need(0 <= self.warmup_epochs <= self.epochs, "warmup_epochs", f"an integer in [0, epochs={self.epochs}]")
        need(self.knn_k >= 1, "knn_k", "an integer >= 1")
        need(self.knn_t > 0, "knn_t", "a number > 0")
        need(self.knn_every >= 1, "knn_every", "an integer >= 1")
        need(self.knn_bank_size >= 1, "knn_bank_size", "an integer >= 1")
        need(self.knn_val_size >= 1, "knn_val_size", "an integer >= 1")
        need(self.probe_epochs >= 1, "probe_epochs", "an integer >= 1")
        need(self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}")
        need(0 <= self.seed < 2**32, "seed", "an integer in [0, 2**32 - 1] (numpy's range)")
        need(0 <= self.split_seed < 2**32, "split_seed", "an integer in [0, 2**32 - 1] (numpy's range)")
        need(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
        need(self.memory_format in MEMORY_FORMATS, "memory_format", f"one of {', '.join(MEMORY_FORMATS)}")
        need(self.checkpoint_every >= 1, "checkpoint_every", "an integer >= 1")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", "an integer >= 1")
        return self

    def _validate_negatives(self, need) -> None:
        close = difflib.get_close_matches(str(self.negatives), list(NEGATIVES), n=1)
        need(self.negatives in NEGATIVES, "negatives", f"one of {', '.join(NEGATIVES)}"
             + (f" (did you mean {close[0]!r}?)" if close else ""))
        need(self.hcl_beta >= 0, "hcl_beta", "a number >= 0 (0 = no hardness weighting)")
        need(0.0 <= self.hcl_tau_plus < 1.0, "hcl_tau_plus", "a number in [0, 1) (0 = no debiasing)")
        need(0.0 < self.ring_high <= 1.0, "ring_high", "a number in (0, 1]")
        need(0.0 <= self.ring_low < self.ring_high, "ring_low", f"a number in [0, ring_high = {self.ring_high})")
        need(self.mochi_mixes >= 0, "mochi_mixes", "an integer >= 0")
        need(self.mochi_query_mixes >= 0, "mochi_query_mixes", "an integer >= 0")
        need(self.mochi_hardest >= (2 if self.mochi_mixes else 1), "mochi_hardest",
             "an integer >= 1, and >= 2 with mochi_mixes > 0 (a mix needs two hard negatives i != j)")
        defaults = TrainConfig.__dataclass_fields__
        for strategy, keys in NEGATIVES.items():
            for key in keys:  # another strategy's key left at its default is fine; a changed one is a mistake
                need(strategy == self.negatives or getattr(self, key) == defaults[key].default, key,
                     f"its default {defaults[key].default!r} here: only negatives = {strategy} reads it, and "
                     f"negatives = {self.negatives} (set negatives: {strategy}, or leave {key} out)")

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str | None = None) -> "TrainConfig":
        """Build and validate a config from a mapping; unknown keys are errors that suggest the closest name."""
        if not isinstance(values, dict):
            raise ConfigError("<top level>", values, "a mapping of key: value", source)
        known = field_names()
        for key in values:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "see moco/config.py for the keys"
                raise ConfigError(str(key), values[key], f"an unknown key ({hint})", source)
        converted = {k: _coerce(k, v, source) for k, v in values.items()}
        return cls(**converted).validate(source)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "TrainConfig":
        """Load a YAML file (a flat mapping of keys), apply ``overrides`` and validate."""
        values = load_yaml(path) or {}
        if isinstance(values, dict) and values and set(values) <= set(SPACE_SECTIONS):
            raise ConfigError("<top level>", ", ".join(map(str, values)), "a training config (a flat mapping of "
                              "TrainConfig keys), not a space file (that goes to study/run.py --space)", str(path))
        values = {**values, **(overrides or {})}
        return cls.from_dict(values, source=str(path))

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with some fields changed."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    # --- derived values ---------------------------------------------------------------------------------------
    @property
    def grayscale(self) -> bool:
        return self.dataset in ("fashion_mnist", "digits")

    @property
    def views(self) -> int:
        """Views through the query encoder per image and step: 2 for the dual-view loss (0 < lambda < 1), else 1.

        One epoch costs ``views`` units of :data:`moco.vocabulary.COMPUTE` (both encoders run on every view), so a
        run's compute is ``epochs * views``, and with ``compute_budget`` set, ``epochs = compute_budget / views``.
        """
        return int(self.dual_view_weight > 0.0) + int(self.dual_view_weight < 1.0)

    @property
    def compute(self) -> int:
        """The compute of the whole run (``epochs * views``)."""
        return self.epochs * self.views


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def plain_name(name: str, flag: str) -> str:
    """A run or study name is one plain folder name (never a path, empty, '.' or '..'); returns it unchanged."""
    if not _PLAIN_NAME.fullmatch(name):
        raise ConfigError(flag, name, "a plain name of letters, digits, '.', '_' and '-', starting with a letter or "
                          "digit, at most 100 characters (no paths: choose the folder with --storage)")
    return name


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file through :mod:`moco.safe_yaml` (UTF-8, bounded, no duplicate keys); every refusal becomes a
    ``ConfigError`` with the position and the reason."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("<file>", str(path), "an existing YAML file")
    try:
        return load_file(path)
    except YamlError as err:
        raise ConfigError("<yaml syntax>", err.where or "the file", err.reason, str(path)) from None


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are read as YAML scalars (``1e-3``, ``true``, ``null``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError("--set", item, "key=value")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = load_value(raw, f"--set {key.strip()}")
        except YamlError as err:
            raise ConfigError(f"--set {key.strip()}", raw, err.reason) from None
    return out


_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any, source: str | None) -> Any:
    """Accept ints for floats and YAML's exponent strings (``1e-3`` is a string in YAML 1.1)."""
    hint = _HINTS[key]
    if value is None:
        return None
    if hint in (float, float | None) and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(key, value, "a number", source) from None
    if hint in (float, float | None) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, int | None) and isinstance(value, float) and value.is_integer():
        return int(value)  # 4096.0 from a CSV or a numeric search is the integer 4096
    return value


def _check_types(cfg: TrainConfig, source: str | None) -> None:
    for f in fields(cfg):
        value, hint = getattr(cfg, f.name), _HINTS[f.name]
        options = typing.get_args(hint) or (hint,)
        if value is None and type(None) in options:
            continue
        base = [t for t in options if t is not type(None)][0]
        ok = isinstance(value, base) and not (base in (int, float) and isinstance(value, bool))
        if base is float and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            name = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}[base]
            raise ConfigError(f.name, value, name + (" or null" if type(None) in options else ""), source)
