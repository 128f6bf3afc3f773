"""study/params.py: a searched parameter validated as its space file is read (the refusals of whole files are in
test_space.py and test_bad_input.py)."""

from __future__ import annotations

import pytest

from study.params import SpaceError, load_params


def test_numbers_are_held_as_their_parameter_type():
    lr, k = load_params({"lr": {"type": "float", "low": "1e-4", "high": 1}, "knn_k": {"type": "int", "low": 10.0,
                                                                                        "high": 20, "step": 5.0}},
                        "space.yaml")
    assert (lr.low, lr.high) == (1e-4, 1.0) and isinstance(lr.high, float)
    assert (k.low, k.high, k.step) == (10, 20, 5) and all(isinstance(v, int) for v in (k.low, k.step))


@pytest.mark.parametrize("spec, key, words", [
    ({"type": "float", "low": True, "high": 1}, "search.lr.low", "True: must be a finite number"),
    ({"type": "float", "low": 0.1, "high": float("inf")}, "search.lr.high", "inf: must be a finite number"),
    ({"type": "float", "low": 0.1}, "search.lr.high", "missing"),
    ({"type": "int", "low": 0.5, "high": 2}, "search.lr.low", "0.5: must be an integer"),
    ({"type": "float", "low": 0.1, "high": 1, "log": "yes"}, "search.lr.log", "'yes': true or false"),
    ({"type": "float", "low": 0.1, "high": 1, "choices": [1]}, "search.lr.choices", "unknown key for a float"),
    ({"type": "categorical", "choices": [[1], [2]]}, "search.lr.choices", "plain values"),
    ({"type": "categorical", "choices": "abc"}, "search.lr.choices", "'abc': a non-empty list"),
    ({"type": "fixed", "value": 0.1, "when": 3}, "search.lr.when", "3: a condition such as"),
    ("0.1", "search.lr", "a mapping such as"),
])
def test_a_bad_parameter_is_refused_naming_its_key(spec, key, words):
    with pytest.raises(SpaceError) as err:
        load_params({"lr": spec}, "space.yaml")
    assert err.value.key == key and words in str(err.value), str(err.value)
