"""study/settings.py: the study settings validated once, where they enter (the space file, then the command line)."""

from __future__ import annotations

import pydantic
import pytest

from study.params import SpaceError
from study.settings import StudySettings, load_settings, with_cli


@pytest.mark.parametrize("section, key, words", [
    ({"num_sample": 3}, "study.num_sample", "did you mean 'num_samples'?"),
    ({"num_samples": "3"}, "study.num_samples", "'3': an integer in [1, 10,000]"),
    ({"num_samples": True}, "study.num_samples", "True: an integer in [1, 10,000]"),
    ({"baseline": "yes"}, "study.baseline", "'yes': true or false"),
    ({"metric": "val_knn_top5"}, "study.metric", "'val_knn_top5': one the training reports every epoch"),
    ({"cpus_per_worker": float("nan")}, "study.cpus_per_worker", "nan: null or a finite number > 0"),
    ({"gpus_per_worker": 1.5}, "study.gpus_per_worker", "1.5: 0, a fraction in (0, 1]"),
    ({"reduction_factor": 1}, "study.reduction_factor", "1: an integer >= 2"),
])
def test_a_bad_setting_is_refused_naming_the_file_the_key_and_the_value(section, key, words):
    with pytest.raises(SpaceError) as err:
        load_settings(section, "space.yaml")
    assert err.value.key == key and str(err.value).startswith(f"space.yaml: {key}: ") and words in str(err.value)


def test_good_settings_and_defaults():
    settings = load_settings({"gpus_per_worker": 0.5, "max_concurrent": None, "num_samples": 3}, "space.yaml")
    assert settings == StudySettings(gpus_per_worker=0.5, num_samples=3)
    assert load_settings({"gpus_per_worker": 2}, "space.yaml").gpus_per_worker == 2
    with pytest.raises(pydantic.ValidationError):  # validated once: settings do not change after
        settings.num_samples = 0


def test_command_line_values_are_validated_and_refusals_name_the_flag():
    settings = load_settings({"num_samples": 3, "seed": 4}, "space.yaml")
    changed = with_cli(settings, {"num_samples": 5, "seed": None, "cpus_per_worker": 2.0})
    assert (changed.num_samples, changed.seed, changed.cpus_per_worker) == (5, 4, 2.0)
    with pytest.raises(SpaceError, match=r"^command line: --seed: -1: an integer in \[0, "):
        with_cli(settings, {"seed": -1})


def test_startup_trials_reach_the_tpe_sampler(tmp_path):
    """``startup_trials`` sets TPE's random start-up (Optuna's n_startup_trials); unset, Optuna's default stays."""
    import inspect

    import optuna

    import yaml

    from study.search import make_sampler
    from study.space import load_space
    from tests.conftest import MINI_SPACE

    default = inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default
    assert default != 3
    for value, expected in ((3, 3), (None, default)):
        doc = yaml.safe_load(MINI_SPACE.read_text())
        doc["study"] = {**doc["study"], "searcher": "optuna-tpe", "startup_trials": value}
        path = tmp_path / f"space-{value}.yaml"
        path.write_text(yaml.safe_dump(doc))
        assert make_sampler(load_space(str(path)))._n_startup_trials == expected
