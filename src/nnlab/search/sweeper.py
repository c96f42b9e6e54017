"""nnlab's Hydra sweeper on current Optuna (`hydra/sweeper=nnlab`; the hparams_search presets
select it). What it does beyond hydra-optuna-sweeper:

- Asynchronous workers: `n_jobs` trials run at once and the next one is asked for as soon as
  one finishes (Optuna's ask/tell), not in batches that wait for their slowest trial.
  With Hydra's basic or joblib launcher the trials run in a process pool (loky, as the joblib
  launcher uses); with another launcher (SLURM's) each trial is one launch of one job, from a
  thread per running trial. The packed launcher gets batches of `n_jobs` (it trains a batch
  as one stacked model). `asynchronous: false` waits for each batch.
- Pruning: each trial reports its metric after every validation (nnlab/search/pruning.py);
  a pruned trial is told PRUNED.
- Several objectives: `optimized_metric` a list, `direction` a list of the same length.
- A failed trial (an exception, NaN) is told FAIL and the search goes on.
- Storage: SQLite in the sweep directory unless `storage` names another (nnlab/search/
  storage.py); the same command (same study name and storage) continues the study, and a run
  directory of this sweep directory is never used twice.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import math
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

from nnlab.errors import UserError
from nnlab.search.space import grid, override_value, search_space
from nnlab.sweeps import NoTrialCompleted, failed_as_raised, grid_exhaustion_tolerated

log = logging.getLogger("nnlab.search")

POOL_LAUNCHERS = ("BasicLauncher", "JoblibLauncher")  # trials can run in a process pool
BATCH_LAUNCHERS = ("PackedLauncher",)  # want a batch of trials at once


class SearchStopped(NoTrialCompleted):
    """More trials failed than hydra.sweeper.max_failure_rate allows."""


def execute_job(idx, overrides, hydra_context, config, task_function, singleton_state):
    """One Hydra job in a pool worker (what the joblib launcher runs in its workers)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals
    from omegaconf import open_dict

    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    return run_job(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def directions_of(direction: Any, metrics: list[str]) -> list[str]:
    names = (
        list(direction)
        if isinstance(direction, list | tuple) or OmegaConf.is_list(direction)
        else [direction]
    )
    names = [str(getattr(d, "name", d)) for d in names]
    if len(names) == 1 and len(metrics) > 1:
        names = names * len(metrics)
    for d in names:
        if d not in ("minimize", "maximize"):
            raise UserError(f"hydra.sweeper.direction: {d!r}; use minimize or maximize (or a list)")
    if len(names) != len(metrics):
        raise UserError(
            f"hydra.sweeper.direction: {len(names)} directions for {len(metrics)} metrics "
            f"(optimized_metric: {', '.join(metrics)}); give one direction per metric"
        )
    return names


class SearchSweeper:
    def __init__(self, **settings: Any):
        self.settings = settings

    # -- Hydra's Sweeper interface (hydra_plugins.nnlab_search.NnlabSweeper forwards here)
    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = os.path.abspath(str(config.hydra.sweep.dir))

    def sweep(self, arguments: list[str], validate_batch: Any = None) -> None:
        import optuna

        from nnlab.search.pruning import build_pruner
        from nnlab.search.storage import open_storage, storage_url, write_search_file

        s = self.settings
        # the settings' types and bounds were checked before the sweep (nnlab/schema.py,
        # declared in nnlab/search/config.py: sweeper_settings)
        n_trials, n_jobs = int(s.get("n_trials", 20)), int(s.get("n_jobs", 1))
        max_failure_rate = float(s.get("max_failure_rate", 1.0))
        optimized = OmegaConf.select(self.config, "optimized_metric")
        metrics = list(optimized) if OmegaConf.is_list(optimized) else [optimized]
        if not all(isinstance(m, str) and m for m in metrics):
            raise UserError(
                "optimized_metric: a search needs the metric(s) to optimize, e.g. val/loss"
            )
        directions = directions_of(s.get("direction", "minimize"), metrics)
        pruner_name = str(s.get("pruner") or "none")
        pruner_args = (
            OmegaConf.to_container(s["pruner_args"])
            if OmegaConf.is_config(s.get("pruner_args"))
            else dict(s.get("pruner_args") or {})
        )
        if pruner_name != "none" and len(metrics) > 1:
            raise UserError(
                "hydra.sweeper.pruner: Optuna prunes single-objective studies only; use "
                "pruner=none with several optimized metrics"
            )
        pruner = build_pruner(pruner_name, pruner_args)

        params = s.get("params") or {}
        space, fixed = search_space([f"{k}={v}" for k, v in params.items()] + list(arguments))
        if not space:
            raise UserError(
                "hydra.sweeper.params: the search space is empty; name it in an hparams_search "
                "preset or on the command line, e.g. 'task.optimizer.lr=tag(log,interval(1e-4,1e-2))'"
            )
        # Hydra built the sampler; the grid one is partial: its grid is the search space
        sampler = s.get("sampler")
        is_grid = isinstance(sampler, functools.partial)
        self.grid_values = grid(space) if is_grid else None
        if is_grid:
            sampler = sampler(search_space=self.grid_values)
        target = f"{type(sampler).__module__}.{type(sampler).__name__}"

        url = storage_url(s.get("storage"), self.sweep_dir)
        Path(self.sweep_dir).mkdir(parents=True, exist_ok=True)
        storage = open_storage(url)
        study_name = str(s.get("study_name") or "search")
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            directions=directions,
            load_if_exists=True,
        )
        have = [d.name.lower() for d in study.directions]
        if have != directions:
            raise UserError(
                f"hydra.sweeper.direction: study {study_name!r} in {url} was started with "
                f"{have}, not {directions}; use another hydra.sweeper.study_name"
            )
        info = {
            "study_name": study_name,
            "storage": url,
            "metrics": metrics,
            "directions": directions,
            "pruner": pruner_name,
            "pruner_args": pruner_args,
            "sampler": target,
            "fixed": fixed,
            "task_overrides": [a for a in self.config.hydra.overrides.task],
        }
        write_search_file(self.sweep_dir, info)
        self._fail_stale(study)

        kind = type(self.launcher).__name__
        asynchronous = bool(s.get("asynchronous", True)) and kind not in BATCH_LAUNCHERS
        log.info(
            "Study %s (%s), %s, pruner %s; %d trials, %d at a time%s",
            study_name,
            url,
            type(sampler).__name__,
            pruner_name,
            n_trials,
            n_jobs,
            " (asynchronous)" if asynchronous and n_jobs > 1 else "",
        )
        self.job_idx = self._first_free_job()
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        with grid_exhaustion_tolerated():
            if kind in BATCH_LAUNCHERS or (n_jobs == 1 and kind not in POOL_LAUNCHERS[1:]):
                self._run_batches(study, space, fixed, n_trials, n_jobs, sampler, validate_batch)
            else:
                self._run_pool(
                    study,
                    space,
                    fixed,
                    n_trials,
                    n_jobs,
                    sampler,
                    asynchronous,
                    kind,
                    max_failure_rate,
                    validate_batch,
                )
        self._summary(study, metrics)

    # -- trials
    def _ask(self, study: Any, space: dict, fixed: dict) -> tuple[Any, list[str], int]:
        trial = study.ask(fixed_distributions=space)
        num = self.job_idx
        self.job_idx += 1
        trial.set_user_attr("sweep_dir", self.sweep_dir)
        trial.set_user_attr("job", num)
        subdir = OmegaConf.to_container(self.config.hydra.sweep, resolve=False)["subdir"]
        if subdir == "${hydra.job.num}":
            trial.set_user_attr("run_dir", os.path.join(self.sweep_dir, str(num)))
        for key, value in fixed.items():
            trial.set_user_attr(key, value)
        overrides = [f"{k}={override_value(v)}" for k, v in trial.params.items()]
        overrides += [f"{k}={v}" for k, v in fixed.items()]
        return trial, overrides, num

    def _exhausted(self, study: Any, sampler: Any) -> bool:
        """A grid whose every point has been asked for (running ones too: Optuna's own
        `is_exhausted` hands out running points again, for study.optimize's threads)."""
        values = self.grid_values
        if values is None:
            return False
        started = set()
        for t in study.get_trials(deepcopy=False):
            point = tuple(t.params.get(k) for k in values)
            if all(v in allowed for v, allowed in zip(point, values.values(), strict=True)):
                started.add(point)
        return len(started) >= math.prod(len(v) for v in values.values())

    def _tell(self, study: Any, trial: Any, ret: JobReturn | BaseException, num: int) -> str:
        import optuna

        from nnlab.runs import read_status

        State = optuna.trial.TrialState
        run_dir = None
        if isinstance(ret, JobReturn):
            ret = failed_as_raised([ret])[0]
            if ret.hydra_cfg is not None:
                run_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir")
        run_dir = run_dir or trial.user_attrs.get("run_dir")
        if run_dir:
            trial.set_user_attr("run_dir", str(run_dir))
        status = {}
        if run_dir:
            try:
                status = read_status(run_dir)
            except (OSError, ValueError):
                status = {}
        state, values = State.FAIL, None
        if status.get("status") == "pruned":
            state = State.PRUNED
        elif isinstance(ret, JobReturn) and ret.status == JobStatus.COMPLETED:
            value = ret._return_value
            values = list(value) if isinstance(value, list | tuple) else [value]
            try:
                values = [float(v) for v in values]
            except (TypeError, ValueError):
                values = None
            if (
                values is not None
                and len(values) == len(study.directions)
                and all(map(math.isfinite, values))
            ):
                state = State.COMPLETE
            else:
                log.warning("Trial %d returned %r: told FAIL", trial.number, ret._return_value)
                values = None
        else:
            why = ret if isinstance(ret, BaseException) else ret._return_value
            log.warning("Trial %d (job %d) failed: %s", trial.number, num, why)
        study.tell(
            trial,
            values=values if state == State.COMPLETE else None,
            state=state,
            skip_if_finished=True,
        )
        self.counts[state.name] += 1
        log.info(
            "Trial %d (job %d): %s%s", trial.number, num, state.name, f" {values}" if values else ""
        )
        return state.name

    def _run_batches(self, study, space, fixed, n_trials, n_jobs, sampler, validate_batch) -> None:
        """Batches of n_jobs trials through the launcher (n_jobs=1: one trial at a time)."""
        asked = 0
        while asked < n_trials and not self._exhausted(study, sampler) and not self._stopped():
            size = min(n_jobs, n_trials - asked)
            batch = []
            for _ in range(size):
                if self._exhausted(study, sampler):
                    break
                batch.append(self._ask(study, space, fixed))
            asked += len(batch)
            overrides = [b[1] for b in batch]
            if validate_batch is not None and asked == len(batch):
                self._validated(validate_batch, overrides, study, batch)
            returns = self.launcher.launch(overrides, initial_job_idx=batch[0][2])
            for (trial, _, num), ret in zip(batch, returns, strict=True):
                self._tell(study, trial, ret, num)

    def _validated(self, validate_batch, overrides, study, batch) -> None:
        """The first batch's overrides compose (a typo is one error line before any trial)."""
        import optuna

        try:
            validate_batch(overrides)
        except BaseException:
            for trial, _, _ in batch:
                study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            raise

    def _run_pool(
        self,
        study,
        space,
        fixed,
        n_trials,
        n_jobs,
        sampler,
        asynchronous,
        kind,
        max_failure_rate,
        validate_batch,
    ) -> None:
        from hydra.core.singleton import Singleton

        if kind in POOL_LAUNCHERS:
            from joblib.externals.loky import get_reusable_executor

            executor = get_reusable_executor(max_workers=n_jobs, timeout=60)
            state = Singleton.get_state()

            def submit(overrides: list[str], num: int) -> cf.Future:
                return executor.submit(
                    execute_job,
                    num,
                    overrides,
                    self.hydra_context,
                    self.config,
                    self.task_function,
                    state,
                )
        else:  # each trial one launch of one job (SLURM: one array job of one task)
            threads = cf.ThreadPoolExecutor(max_workers=n_jobs)

            def submit(overrides: list[str], num: int) -> cf.Future:
                return threads.submit(
                    lambda: self.launcher.launch([overrides], initial_job_idx=num)[0]
                )

        Path(self.sweep_dir).mkdir(parents=True, exist_ok=True)
        running: dict[cf.Future, tuple[Any, list[str], int]] = {}
        asked = 0
        first = True
        while True:
            while (
                len(running) < n_jobs
                and asked < n_trials
                and not self._exhausted(study, sampler)
                and not self._stopped(max_failure_rate)
            ):
                trial, overrides, num = self._ask(study, space, fixed)
                if first and validate_batch is not None:
                    self._validated(validate_batch, [overrides], study, [(trial, overrides, num)])
                    first = False
                log.info("\t#%d : %s", num, " ".join(overrides))
                running[submit(overrides, num)] = (trial, overrides, num)
                asked += 1
            if not running:
                break
            when = cf.FIRST_COMPLETED if asynchronous else cf.ALL_COMPLETED
            done, _ = cf.wait(list(running), return_when=when)
            for future in done:
                trial, _, num = running.pop(future)
                try:
                    ret = future.result()
                except BaseException as exc:  # the worker died (killed, out of memory)
                    ret = exc
                self._tell(study, trial, ret, num)

    def _stopped(self, max_failure_rate: float | None = None) -> bool:
        rate = (
            float(self.settings.get("max_failure_rate", 1.0))
            if max_failure_rate is None
            else max_failure_rate
        )
        told = sum(self.counts.values())
        return told > 0 and self.counts["FAIL"] / told > rate

    def _fail_stale(self, study: Any) -> None:
        """Trials left RUNNING by a sweep that was killed: FAIL, when their run is not running."""
        import optuna

        from nnlab.runs import Run

        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            run_dir = t.user_attrs.get("run_dir")
            if run_dir and Run(run_dir).state()[0] != "running":
                log.info("Trial %d was left running by a stopped sweep: told FAIL", t.number)
                study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)

    def _first_free_job(self) -> int:
        """The first job number after every trial directory of this sweep directory (a study
        continued in the same sweep directory never writes into a finished trial's folder)."""
        nums = (
            [int(p.name) for p in Path(self.sweep_dir).iterdir() if p.name.isdigit()]
            if Path(self.sweep_dir).is_dir()
            else []
        )
        return max(nums) + 1 if nums else 0

    def _summary(self, study: Any, metrics: list[str]) -> None:
        import optuna

        done = sum(self.counts.values())
        log.info(
            "Search: %d trials this time: %d completed, %d pruned, %d failed",
            done,
            self.counts["COMPLETE"],
            self.counts["PRUNED"],
            self.counts["FAIL"],
        )
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not complete or self.counts["COMPLETE"] + self.counts["PRUNED"] == 0:
            if self._stopped():
                raise SearchStopped(
                    f"the search stopped: {self.counts['FAIL']} of {done} trials failed, more than "
                    "hydra.sweeper.max_failure_rate allows; each trial's status.json says why"
                )
            raise NoTrialCompleted(
                "none of the search's trials completed; each trial's status.json (and "
                "nnlab-report) says why"
            )
        results: dict[str, Any] = {"name": study.study_name}
        if len(metrics) == 1:
            best = study.best_trial
            log.info("Best value: %s = %s (trial %d)", metrics[0], best.value, best.number)
            log.info(
                "Best parameters: %s",
                " ".join(f"{k}={override_value(v)}" for k, v in best.params.items()),
            )
            results.update(best_params=dict(best.params), best_value=best.value)
        else:
            front = study.best_trials
            log.info("Pareto front of %s: %d trials", ", ".join(metrics), len(front))
            results["solutions"] = [
                {"params": dict(t.params), "values": list(t.values)} for t in front
            ]
        Path(self.sweep_dir, "optimization_results.yaml").write_text(
            OmegaConf.to_yaml(OmegaConf.create(results))
        )
        if self._stopped():
            raise SearchStopped(
                f"the search stopped early: {self.counts['FAIL']} of {done} trials failed, more "
                "than hydra.sweeper.max_failure_rate allows"
            )
