"""nnlab-report: one sweep's trials side by side.

nnlab-report sweep=outputs/multiruns/2026-11-23/04-14-01_sine_mlp_34d783
nnlab-report sweep=<sweep dir> metric=test/mse out=report/

Writes, in `<sweep dir>/report/` unless out= says otherwise:
    leaderboard.csv     every trial: rank, status, swept parameters, final metrics, best epoch,
    leaderboard.md      wall time, error (failed and unfinished trials included, ranked last)
    groups.csv          trials that differ only by seed (or data.fold) grouped: per metric the
    groups.md           mean, standard deviation and 95% confidence interval (t-distribution)
    learning_curves.png per group, the mean per-epoch curve over its trials with a ±1 std band
                        (from each trial's CSV log, else its TensorBoard events)
    comparison.md/.json compare='A vs B': A − B paired by seed/fold: mean difference, 95% CI and
                        the paired t-test
    <metric>_vs_params.png   the optimized metric against each swept parameter
    tensorboard/        one HPARAMS entry per trial with its real final metrics:
                        `tensorboard --logdir <sweep dir>/report/tensorboard`, tab HPARAMS
For a search (nnlab's sweeper), also the study's trials.csv, history.png, importance.csv/.png,
parallel_coordinates.png, the Pareto front of several objectives and best.md with the command
that trains the best trial again (nnlab/search/analysis.py).
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nnlab.cli import command
from nnlab.errors import UserError
from nnlab.runs import METRICS, REPORT, Run, find_runs
from nnlab.search.storage import SEARCH_FILE


@dataclass
class Trial:
    name: str
    root: Path
    overrides: dict[str, str]
    metrics: dict[str, Any]
    status: str
    error: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def _sort_key(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def find_trials(sweep_dir: Path) -> list[Path]:
    """Every run directory (one holding .hydra/overrides.yaml) under the sweep directory."""
    return sorted(find_runs(sweep_dir), key=lambda p: (_sort_key(p), str(p)))


def parse_overrides(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        key = key.lstrip("+~")
        if key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        out[key] = value
    return out


def load_trial(root: Path) -> Trial:
    """A trial as its run directory tells it; one whose files cannot be read is `damaged`, with
    the file named, instead of failing the whole report."""
    status, error = Run(root).state()
    try:
        overrides = parse_overrides(
            yaml.safe_load((root / ".hydra/overrides.yaml").read_text()) or []
        )
        config_path = root / ".hydra/config.yaml"
        config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
        metrics = json.loads((root / METRICS).read_text()) if (root / METRICS).is_file() else {}
        if not isinstance(metrics, dict) or not isinstance(config or {}, dict):
            raise ValueError("not a mapping")
    except (OSError, ValueError, yaml.YAMLError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return Trial(root.name, root, {}, {}, "damaged", f"unreadable files: {detail}")
    return Trial(root.name, root, overrides, metrics, status, error, config or {})


def _resolve_key(config: dict[str, Any], key: str, default: str) -> str:
    """A top-level key of the saved config, following plain `${other}` interpolations."""
    value = config.get(key, default)
    for _ in range(5):
        if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
            value = config.get(value[2:-1], default)
    return value if isinstance(value, str) else default


def swept_parameters(trials: list[Trial]) -> list[str]:
    """The override keys whose values differ between trials (all of them for a single trial)."""
    keys: list[str] = []
    for t in trials:
        keys += [k for k in t.overrides if k not in keys]
    if len(trials) <= 1:
        return keys
    return [k for k in keys if len({t.overrides.get(k) for t in trials}) > 1]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def leaderboard(trials: list[Trial], metric: str, mode: str) -> list[Trial]:
    """Completed trials best first by `metric`, then the others."""
    sign = -1.0 if mode == "max" else 1.0

    def key(t: Trial):
        value = _number(t.metrics.get(metric)) if t.completed else None
        return (value is None, sign * value if value is not None else 0.0, _sort_key(t.root))

    return sorted(trials, key=key)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def table(trials: list[Trial], params: list[str], metric: str) -> tuple[list[str], list[list[str]]]:
    metric_keys = [metric] + sorted(
        {k for t in trials for k, v in t.metrics.items() if "/" in k and _number(v) is not None}
        - {metric}
    )
    header = ["rank", "trial", "status", *params, *metric_keys]
    header += ["best_epoch", "epochs", "wall_time_s", "tags", "error", "run_dir"]
    rows = []
    for i, t in enumerate(trials, start=1):
        row = [str(i) if t.completed else "", t.name, t.status]
        row += [t.overrides.get(p, "") for p in params]
        row += [_fmt(t.metrics.get(k)) for k in metric_keys]
        row += [_fmt(t.metrics.get("best_epoch")), _fmt(t.metrics.get("epochs"))]
        row += [_fmt(t.metrics.get("wall_time_s")), ", ".join(map(str, t.config.get("tags") or []))]
        row += [t.error.replace("\n", " "), str(t.root)]
        rows.append(row)
    return header, rows


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_markdown(path: Path, title: str, header: list[str], rows: list[list[str]]) -> None:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    shown = [h for h in header if h != "run_dir"]
    lines = [f"# {title}", "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        values = [cell(v) for h, v in zip(header, row, strict=True) if h != "run_dir"]
        lines.append("| " + " | ".join(values) + " |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot(path: Path, trials: list[Trial], params: list[str], metric: str) -> None:
    """One panel per swept parameter: the metric of each completed trial against its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in trials if t.completed and _number(t.metrics.get(metric)) is not None]
    panels = params or ["trial"]
    figure, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, sharey=True
    )
    for ax, param in zip(axes[0], panels, strict=True):
        raw = [t.name if param == "trial" else t.overrides.get(param, "") for t in done]
        ys = [float(t.metrics[metric]) for t in done]
        numbers = [_number(v) for v in raw]
        if raw and all(n is not None for n in numbers):
            ax.scatter(numbers, ys, color="C0")
            positive = [n for n in numbers if n > 0]
            if len(positive) == len(numbers) and max(positive) / min(positive) >= 100:
                ax.set_xscale("log")
        else:
            labels = sorted(set(raw), key=str)
            ax.scatter([labels.index(v) for v in raw], ys, color="C0")
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_xlabel(param)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    failed = len(trials) - len(done)
    figure.suptitle(
        f"{metric} of {len(done)} trials" + (f" ({failed} failed or unfinished)" if failed else "")
    )
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def _hparam_value(value: str) -> Any:
    number = _number(value)
    if number is not None:
        return (
            int(number)
            if number.is_integer() and "." not in value and "e" not in value.lower()
            else number
        )
    return value


def write_tensorboard(logdir: Path, trials: list[Trial], params: list[str]) -> None:
    """One HPARAMS session per completed trial (hyperparameters + its final metrics)."""
    from torch.utils.tensorboard import SummaryWriter

    if logdir.exists():
        shutil.rmtree(logdir)  # a report is rewritten whole: no stale sessions
    with SummaryWriter(log_dir=str(logdir)) as writer:
        for t in trials:
            if not t.completed:
                continue
            hparams = {p: _hparam_value(t.overrides.get(p, "")) for p in params}
            hparams["trial"] = t.name
            metrics = {
                k: float(v) for k, v in t.metrics.items() if "/" in k and _number(v) is not None
            }
            for extra in ("best_epoch", "wall_time_s"):
                if _number(t.metrics.get(extra)) is not None:
                    metrics[f"run/{extra}"] = float(t.metrics[extra])
            writer.add_hparams(hparams, metrics, run_name=f"trial_{t.name}")


# -- aggregation over seeds and folds ----------------------------------------------------------
# Override keys that repeat a configuration rather than change it: trials that differ only in
# these form one group, summarised by mean, std and a 95% confidence interval.
REPLICATES = ("seed", "data.fold")


@dataclass
class Group:
    label: str
    params: dict[str, str]
    trials: list[Trial]

    @property
    def done(self) -> list[Trial]:
        return [t for t in self.trials if t.completed]


def group_trials(trials: list[Trial], params: list[str]) -> list[Group]:
    """Trials grouped by their swept parameters other than the replicate keys (seed, fold)."""
    keys = [p for p in params if p not in REPLICATES]
    groups: dict[tuple, Group] = {}
    for t in trials:
        values = {k: t.overrides.get(k, "") for k in keys}
        label = ", ".join(f"{k}={v}" for k, v in values.items()) or "all trials"
        groups.setdefault(tuple(values.items()), Group(label, values, [])).trials.append(t)
    return list(groups.values())


def summarize(values: list[float]) -> dict[str, float]:
    """n, mean, sample std and the 95% t-interval of the mean (nan where n < 2)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "std": math.nan, "ci95_low": math.nan, "ci95_high": math.nan}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def _metric_keys(trials: list[Trial], metric: str) -> list[str]:
    found = {k for t in trials for k, v in t.metrics.items() if "/" in k and _number(v) is not None}
    return [metric] + sorted(found - {metric})


def group_table(
    groups: list[Group], metric: str, mode: str
) -> tuple[list[str], list[list[str]], list[str]]:
    """CSV header and rows (one per group, best mean first) and the Markdown lines."""
    trials = [t for g in groups for t in g.trials]
    metrics = _metric_keys(trials, metric)
    params = list(groups[0].params) if groups else []
    sign = -1.0 if mode == "max" else 1.0

    def values(g: Group, key: str) -> list[float]:
        return [float(t.metrics[key]) for t in g.done if _number(t.metrics.get(key)) is not None]

    summaries = {id(g): {m: summarize(values(g, m)) for m in metrics} for g in groups}

    def rank(g: Group):
        mean = summaries[id(g)][metric]["mean"]
        return (math.isnan(mean), sign * mean if not math.isnan(mean) else 0.0)

    ranked = sorted(groups, key=rank)
    header = ["rank", "group", *params, "trials", "completed"]
    header += [f"{m} {stat}" for m in metrics for stat in ("mean", "std", "ci95_low", "ci95_high")]
    rows, md = [], []
    shown = [metric] + [m for m in metrics[1:] if m.startswith("test/")][:3]
    md += ["| rank | group | n | " + " | ".join(f"{m} (mean ± std) [95% CI]" for m in shown) + " |"]
    md += ["|" + "---|" * (3 + len(shown))]
    for i, g in enumerate(ranked, start=1):
        stats = summaries[id(g)]
        row = [str(i), g.label, *(g.params[p] for p in params), str(len(g.trials))]
        row.append(str(len(g.done)))
        for m in metrics:
            row += [_fmt(stats[m][k]) for k in ("mean", "std", "ci95_low", "ci95_high")]
        rows.append(row)
        cells = []
        for m in shown:
            st = stats[m]
            text = f"{st['mean']:.4g}" if st["n"] else "–"
            if st["n"] >= 2:
                text += f" ± {st['std']:.2g} [{st['ci95_low']:.4g}, {st['ci95_high']:.4g}]"
            cells.append(text)
        label = g.label.replace("|", "\\|")
        md.append(f"| {i} | {label} | {len(g.done)}/{len(g.trials)} | " + " | ".join(cells) + " |")
    return header, rows, md


def learning_curve(root: Path, metric: str, epochs: int | None = None) -> dict[int, float]:
    """{epoch: value} of `metric` during training, from the run's CSV log when it has one, else
    from its TensorBoard events. The evaluation of the best checkpoint after training (logged
    with epoch == the number of epochs) is left out."""
    csv_file = root / "csv" / "metrics.csv"
    curve: dict[int, float] = {}
    if csv_file.is_file():
        with csv_file.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                value, epoch = _number(row.get(metric)), _number(row.get("epoch"))
                if value is not None and epoch is not None:
                    curve.setdefault(int(epoch), value)
    elif (root / "tensorboard").is_dir():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(root / "tensorboard"), size_guidance={"scalars": 0})
        events.Reload()
        tags = events.Tags().get("scalars", [])
        if metric in tags and "epoch" in tags:
            # Lightning logs `epoch` beside every metric, at the same step and moment
            marks = events.Scalars("epoch")
            for event in events.Scalars(metric):
                same = [m for m in marks if m.step == event.step] or marks
                mark = min(same, key=lambda m: abs(m.wall_time - event.wall_time))
                curve.setdefault(int(mark.value), event.value)
    if epochs is not None:
        curve = {e: v for e, v in curve.items() if e < epochs}
    return dict(sorted(curve.items()))


def plot_curves(path: Path, groups: list[Group], metrics: list[str]) -> bool:
    """Per metric, each group's mean learning curve over its trials with a ±1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {
        (id(g), m): [learning_curve(t.root, m, _number(t.metrics.get("epochs"))) for t in g.done]
        for g in groups
        for m in metrics
    }
    metrics = [
        m for m in metrics if any(any(c) for (_, key), cs in curves.items() if key == m for c in cs)
    ]
    if not metrics:
        return False
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        for i, g in enumerate(groups):
            runs = [c for c in curves[(id(g), m)] if c]
            epochs = sorted({e for c in runs for e in c})
            if not epochs:
                continue
            mean, low, high = [], [], []
            for e in epochs:
                st = summarize([c[e] for c in runs if e in c])
                spread = 0.0 if math.isnan(st["std"]) else st["std"]
                mean.append(st["mean"])
                low.append(st["mean"] - spread)
                high.append(st["mean"] + spread)
            x = [e + 1 for e in epochs]
            ax.plot(x, mean, color=f"C{i}", label=f"{g.label} (n={len(runs)})")
            ax.fill_between(x, low, high, color=f"C{i}", alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle("learning curves: mean over seeds/folds, band ±1 std")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return True


def _replicate(t: Trial) -> tuple:
    return tuple(t.overrides.get(k, "") for k in REPLICATES)


def find_group(groups: list[Group], spec: str) -> Group:
    """The one group whose parameters include every `key=value` of `spec` (comma separated)."""
    wanted = parse_overrides([p.strip() for p in spec.split(",") if p.strip()])
    found = [g for g in groups if all(g.params.get(k) == v for k, v in wanted.items())]
    if len(found) != 1:
        known = "; ".join(g.label for g in groups)
        what = "no group" if not found else f"{len(found)} groups"
        raise UserError(f"compare: {what} match {spec!r}; the groups are: {known}")
    return found[0]


def paired_comparison(groups: list[Group], a: str, b: str, metric: str) -> dict[str, Any]:
    """Group a minus group b on `metric`, paired by seed (and fold): mean difference, its 95%
    t-interval and the paired t-test's p-value."""
    from scipy import stats

    first, second = find_group(groups, a), find_group(groups, b)
    values = []
    for g in (first, second):
        values.append(
            {
                _replicate(t): float(t.metrics[metric])
                for t in g.done
                if _number(t.metrics.get(metric)) is not None
            }
        )
    pairs = sorted(set(values[0]) & set(values[1]))
    if len(pairs) < 2:
        raise UserError(
            f"compare: {first.label!r} and {second.label!r} share {len(pairs)} completed seed/fold "
            f"values with {metric}; a paired comparison needs at least 2 (run both groups over the "
            "same seeds, e.g. -m model.cell=lstm,gru seed=1,2,3)"
        )
    x, y = [values[0][p] for p in pairs], [values[1][p] for p in pairs]
    diff = summarize([u - v for u, v in zip(x, y, strict=True)])
    test = stats.ttest_rel(x, y)
    return {
        "a": first.label,
        "b": second.label,
        "metric": metric,
        "pairs": [dict(zip(REPLICATES, p, strict=True)) for p in pairs],
        "n": len(pairs),
        "mean_a": sum(x) / len(x),
        "mean_b": sum(y) / len(y),
        "mean_difference": diff["mean"],
        "std_difference": diff["std"],
        "ci95_low": diff["ci95_low"],
        "ci95_high": diff["ci95_high"],
        "t": float(test.statistic),
        "p_value": float(test.pvalue),
    }


def comparison_markdown(c: dict[str, Any]) -> str:
    seeds = ", ".join("/".join(v for v in p.values() if v) or "-" for p in c["pairs"])
    return "\n".join(
        [
            f"# Paired comparison on {c['metric']}",
            "",
            f"A: {c['a']}  (mean {c['mean_a']:.6g})",
            f"B: {c['b']}  (mean {c['mean_b']:.6g})",
            f"pairs: {c['n']} (seed/fold: {seeds})",
            "",
            "| mean difference A − B | std of differences | 95% CI | t | p (paired t-test) |",
            "|---|---|---|---|---|",
            f"| {c['mean_difference']:.6g} | {c['std_difference']:.3g} | "
            f"[{c['ci95_low']:.6g}, {c['ci95_high']:.6g}] | {c['t']:.3g} | {c['p_value']:.3g} |",
            "",
        ]
    )


def report(
    sweep_dir: Path,
    out: Path | None = None,
    metric: str | None = None,
    tensorboard: bool = True,
    compare: tuple[str, str] | None = None,
) -> dict[str, Path]:
    """Write the sweep's report (see the module docstring); returns {kind: path}."""
    sweep_dir = Path(sweep_dir).resolve()
    roots = find_trials(sweep_dir)
    if not roots:
        raise UserError(
            f"no trials in {sweep_dir}: expected run directories with .hydra/overrides.yaml "
            "(the directory nnlab-train -m printed as its sweep output dir)"
        )
    trials = [load_trial(r) for r in roots]
    config = next((t.config for t in trials if t.config), {})
    optimized = config.get("optimized_metric")
    if not metric and isinstance(optimized, list) and optimized:  # several objectives: the first
        metric = str(optimized[0])
    metric = metric or _resolve_key(config, "optimized_metric", "val/loss")
    mode = _resolve_key(config, "monitor_mode", "min")
    known = {k for t in trials for k, v in t.metrics.items() if _number(v) is not None}
    if known and metric not in known:  # checked before anything is written
        close = difflib.get_close_matches(metric, sorted(known), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise UserError(
            f"metric: {metric!r} is not a metric of this sweep's trials; {hint}they have "
            f"{', '.join(sorted(known))}"
        )
    params = swept_parameters(trials)
    ranked = leaderboard(trials, metric, mode)
    groups = group_trials(ranked, params)
    # checked before anything is written: a bad compare= leaves no half-written report
    comparison = paired_comparison(groups, *compare, metric) if compare else None
    out = Path(out) if out else sweep_dir / REPORT
    out.mkdir(parents=True, exist_ok=True)
    header, rows = table(ranked, params, metric)
    paths = {"csv": out / "leaderboard.csv", "markdown": out / "leaderboard.md"}
    write_csv(paths["csv"], header, rows)
    best = "lowest" if mode == "min" else "highest"
    write_markdown(paths["markdown"], f"{sweep_dir.name}: {metric} ({best} first)", header, rows)
    header, rows, lines = group_table(groups, metric, mode)
    paths["groups_csv"], paths["groups_markdown"] = out / "groups.csv", out / "groups.md"
    write_csv(paths["groups_csv"], header, rows)
    title = f"# {sweep_dir.name}: groups over {' and '.join(REPLICATES)} ({metric}, {best} first)"
    paths["groups_markdown"].write_text("\n".join([title, "", *lines, ""]), encoding="utf-8")
    paths["plot"] = out / f"{metric.replace('/', '_')}_vs_params.png"
    plot(paths["plot"], ranked, params, metric)
    curve_metrics = [metric] + [m for m in ("train/loss",) if m != metric]
    if plot_curves(out / "learning_curves.png", groups, curve_metrics):
        paths["curves"] = out / "learning_curves.png"
    if comparison:
        paths["comparison"] = out / "comparison.md"
        paths["comparison"].write_text(comparison_markdown(comparison), encoding="utf-8")
        (out / "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n")
    if tensorboard:
        paths["tensorboard"] = out / "tensorboard"
        write_tensorboard(paths["tensorboard"], ranked, params)
    if (sweep_dir / SEARCH_FILE).is_file():  # a search: its study's history and analysis
        from nnlab.search.analysis import study_report

        paths.update(study_report(sweep_dir, out))
    return paths


@command("report", run_overrides=False)
def main(
    sweep: str | None,
    out: str | None,
    metric: str | None,
    tensorboard: bool,
    compare: str | None,
) -> dict:
    if not sweep:
        raise UserError(
            "sweep: no sweep directory given; pass sweep=outputs/multiruns/<date>/<sweep>"
        )
    sweep_dir = Path(sweep).expanduser()
    if not sweep_dir.is_dir():
        raise UserError(f"sweep: {sweep_dir} is not a directory; pass a sweep directory")
    pair = None
    if compare:
        pair = tuple(part.strip() for part in str(compare).split(" vs "))
        if len(pair) != 2 or not all(pair):
            raise UserError(
                f"compare: {compare!r} names no two groups; write compare='A vs B', e.g. "
                "compare='model.cell=lstm vs model.cell=gru'"
            )
    with_tensorboard = tensorboard
    paths = report(sweep_dir, Path(out) if out else None, metric, with_tensorboard, pair)
    print(Path(paths["markdown"]).read_text())
    print(Path(paths["groups_markdown"]).read_text())
    if "best" in paths:
        print(Path(paths["best"]).read_text())
    if "comparison" in paths:
        print(Path(paths["comparison"]).read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    if "tensorboard" in paths:
        print(f"compare in TensorBoard: tensorboard --logdir {paths['tensorboard']}  (HPARAMS tab)")
    return paths


if __name__ == "__main__":
    main()
