"""nnlab-predict: a run's checkpoint applied to new inputs; predictions to CSV and a table."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from nnlab.cli import command, load_task, output_dir, run_config
from nnlab.config import build
from nnlab.data.base import Encoded
from nnlab.errors import ConfigError, UserError
from nnlab.runs import Run


@torch.no_grad()
def forecast(task, datamodule, encoded: Encoded, steps: int):
    """Rows of (kind, t, target, prediction): one step ahead for each window, then a recursive
    forecast of `steps` points past the end (each prediction fed back as input)."""
    (windows,) = datamodule.batch_transform(encoded.inputs)
    values, window = encoded.raw, windows.shape[1]
    one_step = datamodule.decode(task(windows)).double()  # (N, horizon)
    rows = []
    for i, pred in enumerate(one_step):
        t = i + window  # index of the first predicted value
        target = values[t].item() if t < len(values) else ""
        rows.append(("one_step", t, target, pred[0].item()))
    history = windows[-1].clone()
    ahead: list[float] = []
    while len(ahead) < steps:
        (step,) = datamodule.batch_transform((history.unsqueeze(0),))
        pred = task(step)[0]
        history = torch.cat([history, pred])[-window:]
        ahead.extend(datamodule.decode(pred).double().tolist())
    rows += [("forecast", len(values) + k, "", v) for k, v in enumerate(ahead[:steps])]
    return rows


def plot_series(values: torch.Tensor, rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(range(len(values)), values, ".", ms=3, color="0.55", label="input series")
    one = [(t, p) for kind, t, _, p in rows if kind == "one_step"]
    ahead = [(t, p) for kind, t, _, p in rows if kind == "forecast"]
    if one:
        ax.plot(*zip(*one, strict=True), color="C1", lw=1.2, label="one step ahead")
    if ahead:
        ax.plot(
            *zip(*ahead, strict=True),
            color="C3",
            lw=1.5,
            ls="--",
            label=f"forecast ({len(ahead)} steps)",
        )
    ax.set(xlabel="time step", ylabel="value")
    ax.legend(loc="best", fontsize=8)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)


def write_rows(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def show(header: list[str], rows, title: str, limit: int = 10) -> None:
    table = Table(title=title)
    for name in header:
        table.add_column(name)
    shown = rows if len(rows) <= limit else [*rows[: limit // 2], *rows[-limit // 2 :]]
    for row in shown:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    Console().print(table)
    if len(rows) > limit:
        print(f"({len(rows) - limit} more rows in the CSV file)")


@torch.no_grad()
def classify(task, datamodule, encoded: Encoded, chunk: int = 256):
    """Rows of (name, predicted class, its probability, every class's probability)."""
    classes, rows = datamodule.classes, []
    names = encoded.names or [str(i) for i in range(len(encoded.inputs[0]))]
    for start in range(0, len(names), chunk):
        batch = datamodule.batch_transform(tuple(t[start : start + chunk] for t in encoded.inputs))
        scores = task.scores(task(*batch)).cpu()
        for name, p in zip(names[start : start + chunk], scores, strict=True):
            if task.binary:  # one probability: of the positive class
                label = classes[1] if p > 0.5 else classes[0]
                rows.append((name, label, float(max(p, 1 - p)), float(p)))
            else:
                k = int(p.argmax())
                rows.append((name, classes[k], float(p[k]), *(float(v) for v in p)))
    header = [*datamodule.columns, "probability"]
    header += [f"p_{c}" for c in (classes[1:] if task.binary else classes)]
    return header, rows


def number(key: str, value, kind: type, optional: bool = False):
    """A command-line value (as typed) as `kind`; `null`/`none` for None when `optional`."""
    if value is None or (optional and str(value).lower() in ("null", "none", "")):
        return None
    try:
        return kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(key, f"expected {what}, got {value!r}") from None


def generate(task, datamodule, prompt, length, temperature, top_k, seed) -> dict:
    """Language-model runs: text sampled after the prompt, with the settings that made it."""
    settings = {
        "length": number("length", length, int),
        "temperature": number("temperature", temperature, float),
        "top_k": number("top_k", top_k, int, optional=True),
        "seed": number("seed", seed, int),
    }
    return {**task.generate(datamodule, prompt or "", **settings), **settings}


@command("predict")
def main(
    run, input, text, ckpt, out, steps, column, prompt, length, temperature, top_k, seed, overrides
) -> Path:  # noqa: A002 (the CLI's word)
    try:
        n_steps = int(steps)
    except ValueError:
        raise UserError(f"steps: expected a whole number, got {steps!r}") from None
    if n_steps < 0:
        raise UserError(f"steps: must be >= 0, got {n_steps}")
    run_dir = Run.open(run)
    cfg = run_config(run_dir, overrides)
    if column:  # the CSV column the series is read from
        OmegaConf.update(cfg, "data.column", column, force_add=True)
    task, path = load_task(run_dir, cfg, ckpt)
    datamodule = build(cfg.data, "data")
    datamodule.load_artifacts(run_dir.root)
    if callable(getattr(task, "generate", None)):  # a language model: text from a prompt
        sample = generate(task, datamodule, prompt, length, temperature, top_k, seed)
        target = output_dir(run_dir, out, f"predictions/{timestamp()}")  # only once it worked
        path = target / "generated.json"
        path.write_text(json.dumps(sample, indent=1, ensure_ascii=False), encoding="utf-8")
        print(sample["text"])
        print(f"Wrote {path}")
        return target
    if prompt is not None:
        raise UserError(f"prompt: {type(task).__name__} does not generate text; prompt= is for language-model runs (task=language_model)")  # fmt: skip
    encoded = datamodule.encode([text] if text is not None else input)
    forecasting = datamodule.horizon is not None  # else a classifier (datamodule.classes)
    if forecasting:  # one step ahead, then recursively
        rows = forecast(task, datamodule, encoded, n_steps)
        header = ["kind", "t", "target", "prediction"]
    else:
        header, rows = classify(task, datamodule, encoded)
    target = output_dir(run_dir, out, f"predictions/{timestamp()}")
    if forecasting:
        plot_series(encoded.raw, rows, target / "forecast.png")
    write_rows(target / "predictions.csv", header, rows)
    show(header[:4], [r[:4] for r in rows], f"{path.name} on {input or text or 'the test split'}")
    print(f"Wrote {target / 'predictions.csv'}")
    return target


def timestamp() -> str:  # unique enough that two predictions never share a folder
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")


if __name__ == "__main__":
    main()
