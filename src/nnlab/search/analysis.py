"""What nnlab-report adds for a search (a sweep directory with search.json): the study read
from its storage.

    trials.csv               every trial: number, state, parameters, value(s), epochs trained,
                             duration, run directory
    history.png              the optimization history (best so far over the trials)
    importance.csv / .png    parameter importances (Optuna's fANOVA evaluator)
    parallel_coordinates.png each completed trial's parameters and value
    pareto_front.csv / .png  several objectives: the trials no other trial beats in all
    best.md                  the best trial(s) and the command that trains them again
"""

from __future__ import annotations

import csv
import logging
import shlex
import warnings
from pathlib import Path
from typing import Any

from nnlab.runs import Run
from nnlab.search.space import override_value
from nnlab.search.storage import open_storage, read_search_file

log = logging.getLogger(__name__)


def rerun_command(params: dict[str, Any], info: dict[str, Any]) -> str:
    """The nnlab-train command that trains a trial's settings again, as one run."""
    fixed = dict(info.get("fixed", {}))
    args = [f"{k}={v}" for k, v in fixed.items()]
    args += [f"{k}={override_value(v)}" for k, v in params.items()]
    if "hparams_search" in fixed:  # its preset makes a multirun; this is one run
        args.append("hydra.mode=RUN")
    return shlex.join(["nnlab-train", *args])


def _epochs(trial: Any) -> int | None:
    run_dir = trial.user_attrs.get("run_dir")
    if run_dir:
        metrics = Run(run_dir).metrics()
        if "epochs" in metrics:
            return int(metrics["epochs"])
    return len(trial.intermediate_values) or None


def _save(ax: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(max(fig.get_size_inches()[0], 8), max(fig.get_size_inches()[1], 5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def study_report(sweep_dir: Path, out: Path) -> dict[str, Path]:
    """The study's files in `out` (see the module docstring); {} when this is no search."""
    info = read_search_file(sweep_dir)
    if info is None:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as vis

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.load_study(study_name=info["study_name"], storage=open_storage(info["storage"]))
    trials = study.get_trials(deepcopy=False)
    # the trials of this sweep directory (a study may span several commands' sweeps)
    here_dir = Path(sweep_dir).resolve()
    here = [t for t in trials if Path(t.user_attrs.get("sweep_dir", "/")).resolve() == here_dir]
    metrics = info["metrics"]
    params = sorted({p for t in trials for p in t.params})
    paths: dict[str, Path] = {"trials_csv": out / "trials.csv"}
    with open(paths["trials_csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            ["number", "state", *params, *metrics, "epochs", "duration_s", "this_sweep", "run_dir"]
        )
        for t in trials:
            values = t.values if t.values else [None] * len(metrics)
            if t.state.name == "PRUNED" and t.intermediate_values:
                values = [t.intermediate_values[max(t.intermediate_values)]]
            duration = t.duration.total_seconds() if t.duration else None
            w.writerow(
                [t.number, t.state.name.lower(), *[t.params.get(p, "") for p in params]]
                + [("" if v is None else v) for v in values]
                + [_epochs(t) or "", "" if duration is None else round(duration, 3)]
                + [int(t in here), t.user_attrs.get("run_dir", "")]
            )
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    lines = [f"# Study {study.study_name}", "", f"Storage: `{info['storage']}`  ", ""]
    lines += [
        f"{len(trials)} trials: "
        + ", ".join(
            f"{sum(t.state.name == s for t in trials)} {s.lower()}"
            for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")
        ),
        "",
    ]
    if not complete:
        lines.append("No trial completed yet.")
    elif len(metrics) == 1:
        best = study.best_trial
        lines += [
            f"Best {metrics[0]}: {best.value} (trial {best.number})",
            "",
            "Train it again:",
            "",
        ]
        lines += ["```bash", rerun_command(best.params, info), "```", ""]
        paths["history"] = out / "history.png"
        _save(vis.plot_optimization_history(study, target_name=metrics[0]), paths["history"])
    else:
        front = study.best_trials
        paths["pareto_csv"] = out / "pareto_front.csv"
        with open(paths["pareto_csv"], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["number", *params, *metrics, "command"])
            for t in front:
                w.writerow(
                    [
                        t.number,
                        *[t.params.get(p, "") for p in params],
                        *t.values,
                        rerun_command(t.params, info),
                    ]
                )
        lines += [f"Pareto front of {', '.join(metrics)}: {len(front)} trials", ""]
        lines += [
            "| trial | " + " | ".join(metrics) + " | command |",
            "|---" * (len(metrics) + 2) + "|",
        ]
        for t in front:
            values = " | ".join(f"{v:.6g}" for v in t.values)
            lines.append(f"| {t.number} | {values} | `{rerun_command(t.params, info)}` |")
        lines.append("")
        if len(metrics) in (2, 3):
            paths["pareto_plot"] = out / "pareto_front.png"
            _save(vis.plot_pareto_front(study, target_names=metrics), paths["pareto_plot"])
    varied = [p for p in params if len({repr(t.params.get(p)) for t in complete}) > 1]
    if len(complete) >= 2 and varied:
        target = None if len(metrics) == 1 else (lambda t: t.values[0])
        importances = optuna.importance.get_param_importances(study, params=varied, target=target)
        paths["importance_csv"] = out / "importance.csv"
        with open(paths["importance_csv"], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["parameter", "importance"])
            for name, value in importances.items():
                w.writerow([name, round(float(value), 6)])
        paths["importance_plot"] = out / "importance.png"
        _save(
            vis.plot_param_importances(study, params=varied, target=target, target_name=metrics[0]),
            paths["importance_plot"],
        )
        paths["parallel"] = out / "parallel_coordinates.png"
        _save(
            vis.plot_parallel_coordinate(
                study, params=varied, target=target, target_name=metrics[0]
            ),
            paths["parallel"],
        )
        lines += ["Parameter importances (fANOVA):", ""]
        lines += [f"- {name}: {float(value):.3f}" for name, value in importances.items()] + [""]
    lines += ["Open the study in optuna-dashboard:", "", "```bash"]
    lines += [f"optuna-dashboard {shlex.quote(_dashboard_storage(info['storage']))}", "```", ""]
    paths["best"] = out / "best.md"
    paths["best"].write_text("\n".join(lines), encoding="utf-8")
    return paths


def _dashboard_storage(url: str) -> str:
    # optuna-dashboard takes a journal file by its path, an RDB by its URL
    return url.removeprefix("journal:") if url.startswith("journal:") else url
