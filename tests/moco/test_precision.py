"""Precision and memory format: what ``auto`` resolves to, fp32 numerics around bf16 encoders, resume across
precisions."""

from __future__ import annotations

import math

import pytest
import torch

import moco.model
import moco.precision
from moco.config import ConfigError, TrainConfig
from moco.data import load_dataset
from moco.engine import Engine
from moco.model import build_model
from moco.precision import autocast, resolve_memory_format, resolve_precision
from moco.checkpoint import engine_state, read_checkpoint_dir, restore, write_checkpoint_dir
from tests.conftest import CONFIGS

CPU = torch.device("cpu")


def _cfg(**overrides) -> TrainConfig:
    # 640 digits = 10 steps of 64 per epoch; the 512-key queue is full after 8 steps
    return TrainConfig.from_yaml(CONFIGS / "digits.yaml", {"epochs": 3, "final_eval": False, "train_subset": 640,
                                                           **overrides})


def _force_cpu_flags(monkeypatch, avx512_bf16: bool, amx_bf16: bool) -> None:
    monkeypatch.setattr(moco.precision, "cpu_bf16_flags", lambda: {"avx512_bf16": avx512_bf16, "amx_bf16": amx_bf16})


def test_auto_is_fp32_and_contiguous_without_native_bf16(monkeypatch):
    _force_cpu_flags(monkeypatch, False, False)
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_memory_format("auto", CPU) == "contiguous"
    cfg = _cfg()
    engine = Engine(cfg, load_dataset(cfg), CPU)
    assert (engine.precision, engine.memory_format) == ("fp32", "contiguous")
    assert engine.train_epoch()["precision"] == "fp32"


def test_auto_is_bf16_and_channels_last_with_native_bf16(monkeypatch):
    _force_cpu_flags(monkeypatch, True, False)  # e.g. AMD Zen 4: AVX512-BF16, no AMX
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_memory_format("auto", CPU) == "channels_last"
    _force_cpu_flags(monkeypatch, False, True)  # AMX tiles alone
    assert (resolve_precision("auto", CPU), resolve_memory_format("auto", CPU)) == ("bf16", "channels_last")
    _force_cpu_flags(monkeypatch, True, True)  # e.g. Xeon Sapphire Rapids
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_memory_format("auto", CPU) == "channels_last"


def test_explicit_choices_are_kept_and_unknown_ones_refused(monkeypatch):
    _force_cpu_flags(monkeypatch, False, False)
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_memory_format("channels_last", CPU) == "channels_last"
    _force_cpu_flags(monkeypatch, True, True)
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_memory_format("contiguous", CPU) == "contiguous"
    with pytest.raises(ConfigError, match="precision = 'fp16'.*auto, fp32, bf16"):
        _cfg(precision="fp16")
    with pytest.raises(ConfigError, match="memory_format"):
        _cfg(memory_format="nhwc")


def test_encoders_run_in_bf16_but_loss_and_queue_stay_fp32(monkeypatch):
    model = build_model(_cfg(), 1)
    seen: dict[str, object] = {}
    conv = next(m for m in model.encoder_q.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda mod, inp, out: seen.update(conv=out.dtype))  # returns None: output unchanged
    original = moco.model.dual_view_loss

    def spy(q1, k2, queue_keys, *args, **kwargs):
        seen.update(q1=q1.dtype, k2=k2.dtype, queue=queue_keys.dtype, autocast=torch.is_autocast_enabled("cpu"))
        return original(q1, k2, queue_keys, *args, **kwargs)

    monkeypatch.setattr(moco.model, "dual_view_loss", spy)
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(64, 1, 8, 8, generator=gen) for _ in range(2)]
    with autocast(CPU, "bf16"):
        model(*views, torch.arange(64))  # fills part of the queue
        loss, stats = model(*views, torch.arange(64, 128))
    assert seen["conv"] == torch.bfloat16  # the encoder's convolutions ran in bf16 ...
    assert seen["q1"] == seen["k2"] == seen["queue"] == torch.float32  # ... the loss saw fp32 embeddings
    assert seen["autocast"] is False  # and computed its logits without autocast
    assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in stats.values())
    assert model.queue.keys.dtype == torch.float32 and len(model.queue) == 128


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_loss_decreases_in_each_precision(precision):
    model = build_model(_cfg(queue_size=128, bn_splits=2), 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(7)
    v1, v2 = torch.randn(32, 1, 8, 8, generator=gen), torch.randn(32, 1, 8, 8, generator=gen)
    ids = torch.arange(32)
    with torch.no_grad():
        for _ in range(4):  # fill the queue so the loss scale is fixed
            model(v1, v2, ids)
    losses = []
    for _ in range(20):
        with autocast(CPU, precision):
            loss, _ = model(v1, v2, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.momentum_update(0.9)
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("first,then", [("fp32", "bf16"), ("bf16", "fp32")])
def test_resume_from_a_checkpoint_written_in_the_other_precision(tmp_path, first, then):
    """Two epochs in ``first``, a checkpoint, the third epoch in ``then``: same as three epochs in ``then``, up to
    bf16 rounding; the checkpoint holds fp32 weights and an fp32 queue whatever the precision."""
    data = load_dataset(_cfg())
    straight = Engine(_cfg(precision=then), data, CPU)
    expected = [straight.train_epoch() for _ in range(3)][-1]

    engine = Engine(_cfg(precision=first), data, CPU)
    engine.train_epoch(), engine.train_epoch()
    write_checkpoint_dir(engine_state(engine), tmp_path)
    state = read_checkpoint_dir(tmp_path)
    assert all(v.dtype in (torch.float32, torch.int64) for v in state["model"].values())
    resumed = Engine(_cfg(precision=then), data, CPU)
    restore(resumed, state)
    assert resumed.epoch == 2 and resumed.precision == then
    assert torch.equal(resumed.model.queue.keys, engine.model.queue.keys)
    third = resumed.train_epoch()
    assert third["epoch"] == 3 and third["precision"] == then
    for key in ("loss", "pos_sim"):
        assert math.isclose(third[key], expected[key], rel_tol=0.05), (key, third[key], expected[key])
