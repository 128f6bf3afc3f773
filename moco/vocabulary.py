"""The names that cross layers, defined once (no torch: the study driver and the analysis import this).

Training reports these keys every epoch (``moco/train.py``), the study writes them to ``history.csv`` and
``trials.csv`` (``study/results.py``), and the analysis reads them back (``analysis/``). A name used by more than one
package lives here and is imported where it is used.
"""

from __future__ import annotations

# --- budget -----------------------------------------------------------------------------------------------------------
#: Cumulative compute of a run, in passes of the training split through the query encoder: a one-way epoch (lambda = 1)
#: adds 1, a dual-view epoch (both views through both encoders) adds 2. For a fixed backbone and training split it is
#: proportional to the FLOPs spent; it is the time attribute of ASHA and the x axis of best-so-far figures.
COMPUTE = "compute"
EPOCH = "epoch"
#: Set to 1 on the report that a run resumed from a checkpoint repeats for that checkpoint's epoch (moco/train.py):
#: a study records it only when that epoch is missing from its record (its first report was lost with the study).
REPEATED = "repeated"

# --- metrics ----------------------------------------------------------------------------------------------------------
#: Per-epoch validation monitor (bounded bank and validation subset): weighted kNN and a closed-form linear probe.
VAL_KNN = "val_knn_top1"
VAL_PROBE = "val_probe_top1"
MONITOR_METRICS = (VAL_KNN, VAL_PROBE)
#: What a study can optimise: reported every epoch (the monitor's latest value is carried between monitor epochs).
STUDY_METRICS = (*MONITOR_METRICS, "loss")
#: Prefix of the raw-pixel value of a monitor metric (same bank, same protocol), e.g. ``raw_val_knn_top1``.
RAW_PREFIX = "raw_"
#: End-of-run endpoints: full validation split (for selection) and test split (final tables only).
FINAL_VAL_KNN = "final_val_knn_top1"
FINAL_VAL_PROBE = "final_val_probe_top1"
TEST_KNN = "test_knn_top1"
TEST_LINEAR = "linear_top1"
FINAL_METRICS = (FINAL_VAL_KNN, FINAL_VAL_PROBE, TEST_KNN, TEST_LINEAR)


def raw_name(metric: str) -> str:
    """The column holding the raw-pixel value of ``metric`` (``val_knn_top1`` -> ``raw_val_knn_top1``)."""
    return RAW_PREFIX + metric


# --- limits of a searched key that a range cannot go past (analysis/bounds.py words its boundary warnings by them) --
#: key -> {bound value: what the key means there}. A best at such a bound is not "outside the range": the key's valid
#: values end there (ratios and thresholds at 1 switch selection and filtering off; lambda = 1 is one-way MoCo v2 and
#: lambda = 0.5 the symmetric loss, below which the two views swap roles; a warm-up cannot be negative).
NATURAL_BOUNDS = {
    "hard_negative_ratio": {1.0: "every negative kept (MoCo v2)"},
    "false_negative_threshold": {1.0: "the false-negative filter off (MoCo v2)"},
    "dual_view_weight": {1.0: "one-way MoCo v2", 0.5: "the symmetric dual-view loss"},
    "selection_warmup_epochs": {0.0: "no warm-up"},
}

# --- step statistics (averaged over an epoch; see moco.model.MoCo.forward) --------------------------------------
STEP_STATS = ("pos_sim", "neg_sim_q10", "neg_sim_q50", "neg_sim_q90", "filtered_frac", "kept_negatives",
              "false_neg_rate")

# --- how a run computed (resolved from TrainConfig's precision and memory_format; see moco/precision.py) ---------
#: Reported with every epoch: ``precision`` is fp32 or bf16, ``memory_format`` channels_last or contiguous.
RUN_SETTINGS = ("precision", "memory_format")

# --- every key of an epoch report that the study keeps (history.csv columns, besides trial_id) ----------------------
HISTORY_KEYS = (EPOCH, COMPUTE, "loss", "lr", "momentum", "images_per_s", "epoch_s", "data_share",
                *MONITOR_METRICS, *(raw_name(m) for m in MONITOR_METRICS), *STEP_STATS,
                "alignment", "uniformity", "images_seen", "ratio", "threshold", *FINAL_METRICS,
                *(raw_name(m) for m in FINAL_METRICS),
                "time_total_s", "node_id", "world_size", "diverged", "startup_ray_s", "startup_setup_s",
                "monitor_s", "final_eval_s", *RUN_SETTINGS)

# --- search space (study/space.py reads space files, study/results.py writes study.json, analysis/ reads it) -----
#: The sections of a space file (a training config has none of them: it is a flat mapping of TrainConfig keys).
SPACE_SECTIONS = ("base", "search", "variants", "seeds", "study", "confirm")
#: Kinds of a searched parameter.
PARAM_TYPES = ("float", "int", "categorical", "fixed")

# --- trial statuses ----------------------------------------------------------------------------------------------
COMPLETED, PRUNED, DIVERGED, ERRORED = "completed", "pruned", "diverged", "errored"
RUNNING, PENDING = "running", "pending"
FINISHED = (COMPLETED, PRUNED, DIVERGED, ERRORED)  #: a trial's outcome is final
STATUSES = (*FINISHED, RUNNING, PENDING)

# --- confirmation (study/confirm.py writes confirm.csv, analysis/confirm.py reads it) ----------------------------
#: Endpoints of a confirmation run: validation endpoints decide (full validation split), test endpoints are shown in the
#: final table only.
VAL_ENDPOINTS = (FINAL_VAL_KNN, FINAL_VAL_PROBE)
TEST_ENDPOINTS = (TEST_KNN, TEST_LINEAR)
#: The full-validation endpoint that confirms a study's per-epoch monitor metric (its "metric family").
FINAL_OF = {VAL_KNN: FINAL_VAL_KNN, VAL_PROBE: FINAL_VAL_PROBE}
#: Candidate names in confirm.csv: the baseline, then the search's best trials top1, top2, ...
BASELINE = "baseline"
#: The MoCo v2 baseline as settings of the method: one-way loss, every negative kept (top-rho selection with
#: rho = 1), no false-negative filter.
BASELINE_POINT = {"dual_view_weight": 1.0, "hard_negative_ratio": 1.0, "false_negative_threshold": 1.0,
                  "negatives": "select"}


def top_name(rank: int) -> str:
    """The candidate name of the search's ``rank``-th best trial (1 -> ``top1``)."""
    return f"top{rank}"
