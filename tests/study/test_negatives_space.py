"""Space files with conditions on a categorical: the negative-sampling strategy and each one's own parameters."""

from __future__ import annotations

import optuna
import pytest

from study.params import SpaceError
from study.space import load_space

SPACE = """
base:
  config: digits
search:
  negatives: {type: categorical, choices: [select, hcl, ring, mochi]}
  hard_negative_ratio: {type: float, low: 0.05, high: 1.0, when: "negatives == select"}
  hcl_beta: {type: float, low: 0.0, high: 6.0, when: "negatives == hcl"}
  ring_low: {type: float, low: 0.0, high: RING_LOW_HIGH, when: "negatives == ring"}
  ring_high: {type: float, low: 0.02, high: 0.5, when: "negatives == ring"}
  mochi_mixes: {type: categorical, choices: [0, 64], when: "negatives != select"}
study:
  num_samples: 3
"""


def _space(tmp_path, ring_low_high=0.01):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.replace("RING_LOW_HIGH", str(ring_low_high)))
    return path


def test_each_strategy_draws_only_its_own_parameters(tmp_path):
    path = _space(tmp_path)
    text = path.read_text().replace('mochi_mixes: {type: categorical, choices: [0, 64], when: "negatives != select"}',
                                    'mochi_mixes: {type: categorical, choices: [0, 64], when: "negatives == mochi"}')
    path.write_text(text)
    space = load_space(str(path))
    seen = {}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        trial = study.ask()
        space.define_by_run(trial)
        params = dict(trial.params)
        seen.setdefault(params["negatives"], set()).update(params)
        space.trial_config(params)  # a valid training config for every drawn point
        study.tell(trial, 0.0)
    assert seen["select"] == {"negatives", "hard_negative_ratio"}
    assert seen["hcl"] == {"negatives", "hcl_beta"}
    assert seen["ring"] == {"negatives", "ring_low", "ring_high"}
    assert seen["mochi"] == {"negatives", "mochi_mixes"}
    assert space.baseline_point() == {"negatives": "select", "hard_negative_ratio": 1.0}


def test_corners_honour_conditions_and_still_refuse_a_bad_active_corner(tmp_path):
    with pytest.raises(SpaceError) as err:  # negatives != select: mochi_mixes = 64 under hcl is another's key
        load_space(str(_space(tmp_path)))
    assert "mochi_mixes" in str(err.value) and "only negatives = mochi reads it" in str(err.value)
    path = _space(tmp_path, ring_low_high=0.03)
    path.write_text(path.read_text().replace('"negatives != select"', '"negatives == mochi"'))
    with pytest.raises(SpaceError) as err:  # ring_low 0.03 with ring_high 0.02: refused, named
        load_space(str(path))
    assert err.value.key == "search.ring_low" and "ring_high" in str(err.value)
