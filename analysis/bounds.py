"""Boundary warnings: searched parameters whose best trials all sit at an edge of the searched range.

For a numeric searched parameter with range [lo, hi] and scale f (log10 for a log-scaled parameter, the identity
otherwise), a value v lies at position

    u(v) = (f(v) - f(lo)) / (f(hi) - f(lo))      (0 = low bound, 1 = high bound).

The parameter is flagged when each of the ``top`` best trials (default 3; at the common rung when given a view at
one fidelity, see ``analysis.fidelity``) has u <= ``margin`` (all at the low bound) or u >= 1 - ``margin`` (all at
the high bound), margin 5 %: the optimum may lie outside the range. Categorical parameters (and fixed ones, which
are not searched) are never flagged; neither is a study with fewer than ``top`` trials.

Where the bound is a limit of the key itself (``moco.vocabulary.NATURAL_BOUNDS``: a ratio of 1, lambda = 1 or 0.5,
...) the range cannot be widened: the warning says instead that the data favour the limit and what the key means there
(for example that the best trials do without hard-negative selection, i.e. are MoCo v2 in that respect).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.load import Param, Study
from moco.vocabulary import NATURAL_BOUNDS

TOP, MARGIN = 3, 0.05
ADVICE = "the optimum may lie outside the range; widen it"


def position(p: Param, values: np.ndarray) -> np.ndarray:
    """u(v) for every value (NaN where the range or a value is unusable; may fall outside [0, 1])."""
    values = np.asarray(values, dtype=float)
    if p.low is None or p.high is None or not float(p.high) > float(p.low):
        return np.full(values.shape, np.nan)
    lo, hi = float(p.low), float(p.high)
    if p.log and lo > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            return (np.log10(values) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
    return (values - lo) / (hi - lo)


def boundary_table(study: Study, top: int = TOP, margin: float = MARGIN) -> pd.DataFrame:
    """One row per flagged parameter: param, bound (``low``/``high``), bound_value, scale, the top trials and their
    values; empty when nothing is flagged."""
    cols = ["param", "bound", "bound_value", "scale", "top_trials", "top_values", "view", "natural"]
    done = study.completed
    if len(done) < top:
        return pd.DataFrame(columns=cols)
    best = done.sort_values(study.metric, ascending=not study.maximize, kind="stable").head(top)
    rows = []
    for p in study.params:
        if p.type == "categorical":
            continue
        v = pd.to_numeric(best[p.column], errors="coerce").to_numpy(dtype=float)
        u = position(p, v)
        if not np.isfinite(u).all():
            continue
        bound = "low" if (u <= margin).all() else "high" if (u >= 1 - margin).all() else None
        if bound:
            value = float(p.low if bound == "low" else p.high)
            rows.append({"param": p.name, "bound": bound, "bound_value": value,
                         "scale": "log" if p.log else "linear", "top_trials": ", ".join(best["trial_id"]),
                         "top_values": ", ".join(f"{x:.4g}" for x in v), "view": study.fidelity_label,
                         "natural": NATURAL_BOUNDS.get(p.name, {}).get(value, "")})
    return pd.DataFrame(rows, columns=cols)


def boundary_warnings(study: Study, top: int = TOP, margin: float = MARGIN) -> list[str]:
    """One plain sentence per flagged parameter (see :func:`boundary_table`)."""
    return [f"`{r.param}`: the top {top} trials ({r.top_values}) lie within {margin * 100:g} % of its {r.bound} bound "
            f"{r.bound_value:g} ({r.scale} scale): "
            + (f"a limit of the key ({r.natural}), so the range cannot be widened there; the data favour the limit."
               if r.natural else f"{ADVICE}.")
            for r in boundary_table(study, top, margin).itertuples()]
