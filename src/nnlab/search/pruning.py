"""Pruning: Optuna's pruners by name, and the Lightning callback through which a trial reports
its metric after every validation and stops when the study's pruner says so.

The callback opens the study's storage itself (named in <sweep dir>/search.json), so it works
wherever the trial runs: in the sweeping process, in a joblib / process-pool worker, in a SLURM
job. A pruned trial stops after that validation; what it saved so far stays (checkpoints,
metrics.json of its best checkpoint) and its status.json says `pruned`. The sweeper reads that
status and tells the study PRUNED. In a packed group (nnlab/packed/group.py) the same
reporter is asked after each epoch; a pruned member stops and the others go on.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from typing import Any

from lightning.pytorch.callbacks import Callback

from nnlab.errors import UserError
from nnlab.search.config import PRUNERS

log = logging.getLogger(__name__)


def build_pruner(name: Any, args: Any = None) -> Any:
    """Optuna's pruner `name` with keyword arguments `args`; bad input names the key."""
    import optuna

    if str(name) not in PRUNERS:
        raise UserError(
            f"hydra.sweeper.pruner: {name!r} is no pruner; choose one of {', '.join(PRUNERS)}"
        )
    cls = getattr(optuna.pruners, PRUNERS[str(name)])
    args = dict(args or {})
    accepted = set(inspect.signature(cls).parameters)
    for key in args:
        if key not in accepted:
            raise UserError(
                f"hydra.sweeper.pruner_args.{key}: not a setting of the {name} pruner; it has "
                f"{', '.join(sorted(accepted)) or 'none'}"
            )
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        raise UserError(f"hydra.sweeper.pruner_args: {exc}") from None


class TrialReporter(Callback):
    """Reports `metric` after each validation of fitting (step = the epoch) to an Optuna trial
    and stops training when the study's pruner prunes it."""

    def __init__(self, trial: Any, metric: str):
        self.trial = trial
        self.metric = metric
        self.pruned_at: int | None = None

    def check(self, value: float, step: int) -> bool:
        """Report `value` at `step` (an epoch); whether the pruner prunes the trial now."""
        if not math.isfinite(value):
            return False
        self.trial.report(value, step=step)
        return self.trial.should_prune()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if self.pruned_at is not None:
            return
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.metric)
            if value is not None:
                prune = self.check(float(value), trainer.current_epoch)
        prune = trainer.strategy.reduce_boolean_decision(prune, all=False)
        if prune:
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True
            log.info(
                "Trial %d pruned after epoch %d (%s); it stops here",
                self.trial.number,
                trainer.current_epoch,
                self.metric,
            )


def trial_reporter(cfg: Any) -> TrialReporter | None:
    """The reporter for this process's job when it is a trial of nnlab's sweeper, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from nnlab.search.storage import read_search_file

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = os.path.abspath(str(hydra_cfg.sweep.dir))
    info = read_search_file(sweep_dir)
    if info is None or len(info.get("directions", [])) != 1:
        return None  # not a search, or several objectives (Optuna prunes single ones only)
    import optuna

    from nnlab.search.storage import open_storage

    storage = open_storage(info["storage"])
    study = optuna.load_study(
        study_name=info["study_name"],
        storage=storage,
        pruner=build_pruner(info.get("pruner", "none"), info.get("pruner_args")),
    )
    job = int(hydra_cfg.job.num)
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if frozen.user_attrs.get("sweep_dir") == sweep_dir and frozen.user_attrs.get("job") == job:
            trial = optuna.trial.Trial(study, frozen._trial_id)
            break
    else:
        log.warning("No running trial of study %s is job %d: not reporting", study.study_name, job)
        return None
    metric = info["metrics"][0]
    if not str(metric).startswith("val"):
        # validation does not compute the optimized metric (test/...): report the monitored one
        # when it is optimized the same way
        if f"{cfg.get('monitor_mode')}imize" != info["directions"][0]:
            log.warning("%s is not a validation metric: trial %d reports nothing", metric, job)
            return None
        metric = cfg.get("monitor")
    return TrialReporter(trial, metric)
