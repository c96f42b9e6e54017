"""nnlab-report: one sweep's trials side by side.

nnlab-report sweep=outputs/multiruns/2026-11-23/04-14-01_sine_mlp_34d783
nnlab-report sweep=<sweep dir> metric=test/mse out=report/

Writes, in `<sweep dir>/report/` unless out= says otherwise:
    leaderboard.csv     every trial: rank, status, swept parameters, final metrics, best epoch,
    leaderboard.md      wall time, error (failed and unfinished trials included, ranked last)
    <metric>_vs_params.png   the optimized metric against each swept parameter
    tensorboard/        one HPARAMS entry per trial with its real final metrics:
                        `tensorboard --logdir <sweep dir>/report/tensorboard`, tab HPARAMS
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nnlab.cli import command
from nnlab.errors import UserError
from nnlab.runs import METRICS, Run, find_runs


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
    header += ["best_epoch", "epochs", "wall_time_s", "error", "run_dir"]
    rows = []
    for i, t in enumerate(trials, start=1):
        row = [str(i) if t.completed else "", t.name, t.status]
        row += [t.overrides.get(p, "") for p in params]
        row += [_fmt(t.metrics.get(k)) for k in metric_keys]
        row += [_fmt(t.metrics.get("best_epoch")), _fmt(t.metrics.get("epochs"))]
        row += [_fmt(t.metrics.get("wall_time_s")), t.error.replace("\n", " "), str(t.root)]
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


def report(
    sweep_dir: Path, out: Path | None = None, metric: str | None = None, tensorboard: bool = True
) -> dict[str, Path]:
    sweep_dir = Path(sweep_dir).resolve()
    roots = find_trials(sweep_dir)
    if not roots:
        raise SystemExit(
            f"error: no trials in {sweep_dir}: expected run directories with .hydra/overrides.yaml "
            "(the directory nnlab-train -m printed as its sweep output dir)"
        )
    trials = [load_trial(r) for r in roots]
    config = next((t.config for t in trials if t.config), {})
    metric = metric or _resolve_key(config, "optimized_metric", "val/loss")
    mode = _resolve_key(config, "monitor_mode", "min")
    params = swept_parameters(trials)
    ranked = leaderboard(trials, metric, mode)
    out = Path(out) if out else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    header, rows = table(ranked, params, metric)
    paths = {"csv": out / "leaderboard.csv", "markdown": out / "leaderboard.md"}
    write_csv(paths["csv"], header, rows)
    best = "lowest" if mode == "min" else "highest"
    write_markdown(paths["markdown"], f"{sweep_dir.name}: {metric} ({best} first)", header, rows)
    paths["plot"] = out / f"{metric.replace('/', '_')}_vs_params.png"
    plot(paths["plot"], ranked, params, metric)
    if tensorboard:
        paths["tensorboard"] = out / "tensorboard"
        write_tensorboard(paths["tensorboard"], ranked, params)
    return paths


@command("report", run_overrides=False)
def main(sweep: str | None, out: str | None, metric: str | None, tensorboard: bool | str) -> dict:
    if not sweep:
        raise UserError(
            "sweep: no sweep directory given; pass sweep=outputs/multiruns/<date>/<sweep>"
        )
    sweep_dir = Path(sweep).expanduser()
    if not sweep_dir.is_dir():
        raise UserError(f"sweep: {sweep_dir} is not a directory; pass a sweep directory")
    with_tensorboard = str(tensorboard).lower() not in ("false", "0", "no")
    paths = report(sweep_dir, Path(out) if out else None, metric, with_tensorboard)
    print(Path(paths["markdown"]).read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    if "tensorboard" in paths:
        print(f"compare in TensorBoard: tensorboard --logdir {paths['tensorboard']}  (HPARAMS tab)")
    return paths


if __name__ == "__main__":
    main()
