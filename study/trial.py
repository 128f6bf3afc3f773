"""One study trial: a Ray Tune function trainable that runs a Ray Train V2 trainer (:mod:`moco.trainer`).

Tune hands the trial its parameters; :func:`run_trial` turns them into a training config (a point of the space, or a
confirmation run's candidate and seed: :meth:`TrialPlan.config`), starts a trainer
named after the trial (so a resumed study resumes the trial's Train run from its latest checkpoint), and forwards
every epoch's report to Tune with ``TuneReportCallback``, which drives ASHA and the searcher. This process loads no
torch (only the Train workers do; :mod:`moco.import_probe` checks it in tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from moco.config import TrainConfig
from moco.import_probe import record_modules
from moco.trainer import make_trainer
from study.space import Space


@dataclass
class TrialPlan:
    """What every trial of a study shares: the space, where Train runs live, and the resources of one trial."""

    space: Space
    train_storage: str  #: storage path of the trials' Train runs (``<run_dir>/train``)
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float = 0.0  #: may be a fraction: several trials' workers share a GPU
    fault: dict | None = None
    #: a confirmation's training configs by candidate name (seed unset); trials are then {candidate, seed}
    configs: dict[str, dict[str, Any]] | None = None

    def config(self, params: dict[str, Any]) -> TrainConfig:
        """A trial's training config: a point of the space, or a confirmation candidate with its seed."""
        if self.configs is None:
            return self.space.trial_config(params)
        return TrainConfig.from_dict({**self.configs[params["candidate"]], "seed": params["seed"]})


def run_trial(params: dict[str, Any], plan: TrialPlan) -> None:
    """Tune function trainable: train one configuration under Ray Train and forward its epoch reports."""
    trial_id = ray.tune.get_context().get_trial_id()
    cfg = plan.config(params)
    trainer = make_trainer(cfg, workers=plan.workers, use_gpu=bool(plan.gpus_per_worker),
                           gpus_per_worker=plan.gpus_per_worker or 1.0, cpus_per_worker=plan.cpus_per_worker,
                           storage=plan.train_storage, name=f"train-{trial_id}",
                           max_failures=plan.space.settings.max_failures, callbacks=[TuneReportCallback()],
                           fault=plan.fault)
    trainer.fit()
    record_modules("trial driver")
