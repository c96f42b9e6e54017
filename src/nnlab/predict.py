"""nnlab-predict: a run's checkpoint applied to new inputs; predictions to CSV and a table."""

from __future__ import annotations

import csv
import math
from datetime import datetime
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from nnlab.cli import command, load_datamodule, load_task, output_dir, run_config
from nnlab.data.series import SeriesDataModule, read_csv_column
from nnlab.errors import UserError
from nnlab.runs import Run


def series_values(
    text: str | None, column: str | None, datamodule: SeriesDataModule
) -> torch.Tensor:
    """The series to predict from, in its own units."""
    if not text:  # the run's own test split
        start = datamodule.starts["test"] - datamodule.window
        return datamodule.unscale(datamodule.series[start:]).double()
    path = Path(text).expanduser()
    if path.is_file():
        return read_csv_column(path, column)
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise UserError(
            f"input: {text!r} is neither a file nor comma-separated numbers; give a CSV file "
            "or values like input=0.1,0.2,0.3,0.4"
        ) from None
    if not values or not all(math.isfinite(v) for v in values):
        raise UserError(f"input: {text!r} holds no finite numbers")
    return torch.tensor(values, dtype=torch.float64)


@torch.no_grad()
def predict_series(task, datamodule: SeriesDataModule, values: torch.Tensor, steps: int):
    """Rows of (kind, t, target, prediction): one step ahead for each window, then a recursive
    forecast of `steps` points past the end (each prediction fed back as input)."""
    window = datamodule.window
    if len(values) < window:
        raise UserError(
            f"input: {len(values)} values given, but the model reads windows of {window}; "
            f"give at least {window} values"
        )
    scaled = ((values - datamodule.mean) / datamodule.std).float()
    windows = scaled.unfold(0, window, 1)
    one_step = datamodule.unscale(task(windows)).double()  # (N, horizon)
    rows = []
    for i, pred in enumerate(one_step):
        t = i + window  # index of the first predicted value
        target = values[t].item() if t < len(values) else ""
        rows.append(("one_step", t, target, pred[0].item()))
    history = scaled[-window:].clone()
    forecast: list[float] = []
    while len(forecast) < steps:
        pred = task(history.unsqueeze(0))[0]
        history = torch.cat([history, pred])[-window:]
        forecast.extend(datamodule.unscale(pred).double().tolist())
    rows += [("forecast", len(values) + k, "", v) for k, v in enumerate(forecast[:steps])]
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
def classify(task, inputs: tuple, names: list[str], classes: list[str]):
    """Rows of (name, predicted class, its probability, every class's probability)."""
    rows = []
    for start in range(0, len(names), 256):
        batch = tuple(t[start : start + 256] for t in inputs)
        scores = task.scores(task(*batch)).cpu()
        for name, p in zip(names[start : start + 256], scores, strict=True):
            if task.binary:  # one probability: of the positive class
                label = classes[1] if p > 0.5 else classes[0]
                rows.append((name, label, float(max(p, 1 - p)), float(p)))
            else:
                k = int(p.argmax())
                rows.append((name, classes[k], float(p[k]), *(float(v) for v in p)))
    return rows


@command("predict")
def main(run, input, text, ckpt, out, steps, column, overrides) -> Path:  # noqa: A002 (the CLI's word)
    from hydra.utils import get_class

    from nnlab.data.imdb import IMDBDataModule
    from nnlab.data.mnist import MNISTDataModule
    from nnlab.predict_inputs import read_images, read_texts

    run_dir = Run.open(run)
    cfg = run_config(run_dir, overrides)
    task, path = load_task(run_dir, cfg, ckpt)
    data_class = get_class(cfg.data._target_)
    if issubclass(data_class, SeriesDataModule):
        try:
            n_steps = int(steps)
        except ValueError:
            raise UserError(f"steps: expected a whole number, got {steps!r}") from None
        if n_steps < 0:
            raise UserError(f"steps: must be >= 0, got {n_steps}")
        datamodule = load_datamodule(cfg, "predict")
        values = series_values(input, column or cfg.data.get("column"), datamodule)
        rows = predict_series(task, datamodule, values, n_steps)
        header = ["kind", "t", "target", "prediction"]
        target = output_dir(run_dir, out, f"predictions/{timestamp()}")
        plot_series(values, rows, target / "forecast.png")
    elif issubclass(data_class, MNISTDataModule):
        images, names = read_images(input)
        datamodule = load_datamodule(cfg, "predict")  # the view and its normalisation
        rows = classify(task, (datamodule.to_view(images),), names, datamodule.classes)
        header = ["input", "class", "probability", *(f"p_{c}" for c in datamodule.classes)]
        target = output_dir(run_dir, out, f"predictions/{timestamp()}")
    elif issubclass(data_class, IMDBDataModule):
        inputs, names = read_texts(run_dir.root, text, input, cfg.data.get("view", "multihot"))
        rows = classify(task, inputs, names, ["negative", "positive"])
        header = ["review", "sentiment", "probability", "p_positive"]
        target = output_dir(run_dir, out, f"predictions/{timestamp()}")
    else:
        raise UserError(f"run: nnlab-predict does not know {cfg.data._target_} data")
    write_rows(target / "predictions.csv", header, rows)
    show(header[:4], [r[:4] for r in rows], f"{path.name} on {input or text or 'the test split'}")
    print(f"Wrote {target / 'predictions.csv'}")
    return target


def timestamp() -> str:  # unique enough that two predictions never share a folder
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")


if __name__ == "__main__":
    main()
