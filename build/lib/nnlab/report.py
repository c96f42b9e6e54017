"""nnlab-report: one sweep's trials side by side.

nnlab-report outputs/multiruns/2026-11-23/04-14-01_sine_mlp_34d783
nnlab-report <sweep dir> --metric test/mse --out report/

Writes, in `<sweep dir>/report/` unless --out says otherwise:
    leaderboard.csv     every trial: rank, status, swept parameters, final metrics, best epoch,
    leaderboard.md      wall time, error (failed and unfinished trials included, ranked last)
    <metric>_vs_params.png   the optimized metric against each swept parameter
    tensorboard/        one HPARAMS entry per trial with its real final metrics:
                        `tensorboard --logdir <sweep dir>/report/tensorboard`, tab HPARAMS
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nnlab.runs import METRICS, read_status

# SLURM states of a job that ended without finishing its run (sacct -o State).
SLURM_ENDED = ("CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE")  # fmt: skip


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
    roots = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    roots = {r for r in roots if "report" not in r.relative_to(sweep_dir).parts}
    return sorted(roots, key=lambda p: (_sort_key(p), str(p)))


def parse_overrides(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        key = key.lstrip("+~")
        if key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        out[key] = value
    return out


def _slurm_state(job_id: str) -> str | None:
    if not shutil.which("sacct"):
        return None
    try:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job_id)],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    states = [s.split()[0] for s in out.split("\n") if s.strip()]
    return states[-1] if states else None


def _pid_alive(pid: int) -> bool:
    try:
        import os

        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def trial_status(root: Path) -> tuple[str, str]:
    """(status, error): completed | failed | running | unknown. A run whose status.json still
    says running but whose SLURM job ended (scancel, time limit, node failure), or whose process
    on this host is gone, failed."""
    status = read_status(root)
    if (root / METRICS).is_file() and status.get("status") in (None, "completed"):
        return "completed", ""
    state = status.get("status")
    if state is None:
        return "unknown", "no status.json (the run never started)"
    # A SLURM job ended by the scheduler (scancel sends SIGTERM, so the run saved a checkpoint and
    # said `preempted`) failed unless SLURM requeues it.
    if state in ("running", "preempted") and (job := status.get("slurm_job_id")):
        slurm = _slurm_state(job)
        if slurm and slurm.startswith(SLURM_ENDED):
            return "failed", f"SLURM job {job} {slurm}"
        if state == "running":
            return "running", f"SLURM job {job} {slurm or 'state unknown'}"
    if state == "running":
        import socket

        if status.get("host") == socket.gethostname() and not _pid_alive(int(status["pid"])):
            return "failed", f"process {status['pid']} ended without finishing the run"
        return "running", ""
    return state, status.get("error", "")


def load_trial(root: Path) -> Trial:
    overrides = parse_overrides(yaml.safe_load((root / ".hydra/overrides.yaml").read_text()) or [])
    config_path = root / ".hydra/config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    metrics = json.loads((root / METRICS).read_text()) if (root / METRICS).is_file() else {}
    status, error = trial_status(root)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nnlab-report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a sweep directory (outputs/multiruns/...)")
    parser.add_argument("--out", type=Path, help="where to write (default: <sweep_dir>/report)")
    parser.add_argument("--metric", help="the metric to rank by (default: optimized_metric)")
    parser.add_argument("--no-tensorboard", action="store_true", help="skip the HPARAMS logdir")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    paths = report(args.sweep_dir, args.out, args.metric, not args.no_tensorboard)
    print(Path(paths["markdown"]).read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    if "tensorboard" in paths:
        print(f"compare in TensorBoard: tensorboard --logdir {paths['tensorboard']}  (HPARAMS tab)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
