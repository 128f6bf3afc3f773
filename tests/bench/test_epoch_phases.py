"""bench/epoch_phases.py: the phase clock times an Engine epoch without changing it, and the page lines and the
ceiling follow from the phases."""

from __future__ import annotations

import pytest
import torch

import moco.model
from bench.epoch_phases import ENCODER_PHASES, PHASES, render, summarise, timed_epoch
from bench.step import DEFAULT_CONFIG
from moco.config import TrainConfig
from moco.data import load_dataset
from moco.engine import Engine


@pytest.fixture(scope="module")
def small():
    cfg = TrainConfig.from_yaml(DEFAULT_CONFIG)
    cfg = cfg.replace(train_subset=2 * cfg.batch_size, queue_size=1024, precision="fp32", memory_format="contiguous")
    return cfg, load_dataset(cfg)


def test_a_timed_epoch_trains_exactly_as_an_untimed_one_and_puts_everything_back(small):
    cfg, data = small
    # one after the other: an Engine seeds the global generator, which the key shuffle draws from
    plain = Engine(cfg, data, torch.device("cpu"))
    untimed_out = plain.train_epoch()
    timed = Engine(cfg, data, torch.device("cpu"))
    augment = timed.augment
    got = timed_epoch(timed)
    for a, b in zip(plain.model.state_dict().values(), timed.model.state_dict().values()):
        assert torch.equal(a, b)
    # every phase ran (ms per step > 0) and they add up to the epoch's step time, "other" being the rest
    assert set(got["phases_s"]) == set(PHASES)
    assert all(got["phases_s"][p] > 0 for p in PHASES), got["phases_s"]
    assert sum(got["phases_s"].values()) == pytest.approx(got["step_s"], rel=1e-9)
    assert got["images_per_s"] > 0 and untimed_out["epoch"] == 1
    # nothing stays wrapped: the engine, the model, the optimizer and the modules are as before
    for owner, name in ((timed.model, "_query"), (timed.model, "_key"), (timed.model, "momentum_update"),
                        (timed.model.queue, "snapshot"), (timed.optimizer, "step"), (timed.optimizer, "zero_grad")):
        assert name not in vars(owner), name
    assert timed.augment is augment
    assert moco.model.dual_view_loss.__module__ == "moco.losses"
    assert torch.nn.utils.clip_grad_norm_.__module__.startswith("torch.nn.utils")
    # and the next epoch trains as the plain engine's does
    losses = []
    for engine in (plain, timed):
        torch.manual_seed(5)
        losses.append(engine.train_epoch()["loss"])
    assert losses[0] == losses[1]


def test_the_ceiling_and_the_encoder_speed_up_two_times_needs():
    fp32 = dict.fromkeys(PHASES, 0.01)
    for p in ENCODER_PHASES:
        fp32[p] = 0.1  # encoders 0.3 s of a 0.38 s step
    auto = {**fp32, **{p: 0.05 for p in ENCODER_PHASES}}  # encoders 2x as fast: 0.23 s
    s = summarise(fp32, auto)
    assert s["speedup"] == pytest.approx(0.38 / 0.23)
    assert s["encoder_speedup"] == pytest.approx(2.0)
    assert s["ceiling"] == pytest.approx(0.38 / 0.08)
    # 2x: the step at 0.19 s leaves the encoders 0.11 s of the 0.3 s they take in fp32
    assert s["encoder_speedup_needed"] == pytest.approx(0.3 / 0.11)
    slow_rest = {**auto, "loss": 0.2}  # the rest alone takes more than half of fp32's step: out of reach
    assert summarise(fp32, slow_rest)["encoder_speedup_needed"] is None


def test_the_page_shows_each_phase_and_says_what_two_times_would_need():
    fp32 = {**dict.fromkeys(PHASES, 0.01), **dict.fromkeys(ENCODER_PHASES, 0.1)}
    auto = {**fp32, **dict.fromkeys(ENCODER_PHASES, 0.05)}
    part = {"command": "python -m bench.step --parts phases", "date": "d", "machine": {"cpu": "Xeon",
            "torch_threads": 2}, "cpu_share": 0.98, "steps_per_epoch": 30, "epochs": 7, "batch": 256,
            "queue_size": 4096, "views": 2,
            "resolved": {"auto": {"precision": "bf16", "memory_format": "channels_last"}},
            "fp32": {"phases_s": fp32}, "auto": {"phases_s": auto}, **summarise(fp32, auto)}
    page = "\n".join(render(part))
    assert "| query encoder (encoders) | 100.0 | 50.0 | 2.00x | 21.7 % |" in page
    assert "| loss | 10.0 | 10.0 | 1.00x | 4.3 % |" in page
    assert "| **step** | 380.0 | 230.0 | 1.65x | 100 % |" in page
    assert "at most 4.75x as fast as fp32" in page and "needs the encoders 2.73x as fast" in page
    assert "had 98 % of its threads' CPU time" in page and "K = 4096, dual-view)" in page
    assert "(quick mode)" not in page and "(quick mode)" in "\n".join(render({**part, "quick": True}))
