"""The step benchmark's comparison with lightly: both steps train, and the page renders the three variants."""

import pytest

from bench import lightly_step


def test_lightly_comparison_trains_each_variant_and_renders():
    pytest.importorskip("lightly")
    for precision in ("fp32", "bf16"):
        fns = lightly_step._steps(precision)
        assert tuple(fns) == lightly_step.VARIANTS
        for fn in fns.values():
            fn()  # one step each: forward, backward, SGD, momentum update, queue / memory bank update
    r = lightly_step.bench_lightly(repeats=1, precisions=("fp32",))
    rows = r["precisions"]["fp32"]
    assert set(rows) == set(lightly_step.VARIANTS) and rows["lightly 1.6"]["speed_vs_lightly"] == 1.0
    assert all(row["images_per_s"] > 0 for row in rows.values())
    page = "\n".join(lightly_step.render(r))
    assert page.count("\n| ") == 4  # header and three variants


def test_lightly_comparison_is_skipped_without_lightly(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_lightly(name, *args, **kwargs):
        if name == "lightly" or name.startswith("lightly."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lightly)
    r = lightly_step.bench_lightly(repeats=1)
    assert "skipped" in r and "skipped" in lightly_step.render(r)[0]
