"""nnlab-predict: a run's checkpoint applied to new inputs; predictions to CSV and a table."""

from __future__ import annotations

import csv
import functools
import json
import math
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from nnlab.cli import command, load_task, output_dir, run_config
from nnlab.config import build
from nnlab.errors import UserError
from nnlab.runs import PREDICTIONS, Run
from nnlab.schema import NonNegativeInt, PositiveFloat, PositiveInt, Seed

if TYPE_CHECKING:
    import torch

    from nnlab.data.base import Encoded


def no_grad(fn):
    """torch.no_grad() around `fn`, torch imported when it runs: `nnlab-predict --help` and a
    refused argument answer without torch (tests/test_startup.py)."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return call


@no_grad
def forecast(task, datamodule, encoded: Encoded, steps: int):
    """Rows of (kind, t, column, target, prediction): one step ahead of each window for each
    target column, then a recursive forecast of `steps` rows past the end (each prediction fed
    back as input; only where the targets are the features)."""
    import torch

    (windows,) = datamodule.batch_transform(encoded.inputs)
    table, window, targets = encoded.raw, datamodule.window, datamodule.targets
    columns = [datamodule.names.index(t) for t in targets]
    one_step = datamodule.decode(task(windows)).double().reshape(len(windows), -1, len(targets))
    rows = []
    for i, pred in enumerate(one_step):
        t = i + window  # row of the first predicted value
        for j, name in enumerate(targets):
            target = table[t, columns[j]].item() if t < len(table) else math.nan
            rows.append(
                ("one_step", t, name, "" if math.isnan(target) else target, pred[0, j].item())
            )
    if steps and targets != datamodule.features:
        print(
            f"No recursive forecast: it feeds predictions back as inputs, and this run predicts "
            f"{', '.join(targets)} from {', '.join(datamodule.features)} (steps=0 hides this)"
        )
        return rows
    history = windows[-1].clone()  # (window[, features]): the features are the targets here
    ahead: list[torch.Tensor] = []
    while len(ahead) < steps:
        (step,) = datamodule.batch_transform((history.unsqueeze(0),))
        pred = task(step)[0]  # (horizon * targets,), step by step
        history = torch.cat([history, pred.reshape(-1, *history.shape[1:])])[-window:]
        ahead.extend(datamodule.decode(pred).double().reshape(-1, len(targets)))
    for k, values in enumerate(ahead[:steps]):
        at = len(table) + k
        rows += [("forecast", at, n, "", v.item()) for n, v in zip(targets, values, strict=True)]
    return rows


def plot_series(datamodule, table: torch.Tensor, rows, path: Path) -> None:
    """One panel per target column: the input series, one step ahead, the forecast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = datamodule.targets
    figure, axes = plt.subplots(len(targets), 1, figsize=(9, 3.5 * len(targets)), squeeze=False)
    for ax, name in zip(axes[:, 0], targets, strict=True):
        values = table[:, datamodule.names.index(name)]
        ax.plot(range(len(values)), values, ".", ms=3, color="0.55", label="input series")
        one = [(t, p) for kind, t, c, _, p in rows if kind == "one_step" and c == name]
        ahead = [(t, p) for kind, t, c, _, p in rows if kind == "forecast" and c == name]
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
        ax.set(xlabel="time step", ylabel=name)
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


@no_grad
def classify(task, datamodule, encoded: Encoded, chunk: int = 256):
    """Rows of (name, predicted class, its probability, every class's probability); for a
    multi-label task (name, the labels present, every label's probability)."""
    classes, rows = datamodule.classes, []
    multilabel = task.target_kind == "labels"
    names = encoded.names or [str(i) for i in range(len(encoded.inputs[0]))]
    for start in range(0, len(names), chunk):
        batch = datamodule.batch_transform(tuple(t[start : start + chunk] for t in encoded.inputs))
        scores = task.scores(task(*batch)).cpu()
        for name, p in zip(names[start : start + chunk], scores, strict=True):
            if multilabel:  # every label above the threshold (none, one or several)
                present = [c for c, v in zip(classes, p, strict=True) if v > task.threshold]
                rows.append((name, "+".join(present) or "(none)", *(float(v) for v in p)))
            elif task.binary:  # one probability: of the positive class
                label = classes[1] if p > 0.5 else classes[0]
                rows.append((name, label, float(max(p, 1 - p)), float(p)))
            else:
                k = int(p.argmax())
                rows.append((name, classes[k], float(p[k]), *(float(v) for v in p)))
    if multilabel:
        return ["input", "labels", *(f"p_{c}" for c in classes)], rows
    header = [*datamodule.columns, "probability"]
    header += [f"p_{c}" for c in (classes[1:] if task.binary else classes)]
    return header, rows


@no_grad
def regress(task, datamodule, encoded: Encoded, chunk: int = 256):
    """Rows of (name, each target's predicted value in the data's units): regression on
    independent samples (tables of rows)."""
    targets = list(datamodule.targets)
    names = encoded.names or [str(i) for i in range(len(encoded.inputs[0]))]
    rows = []
    for start in range(0, len(names), chunk):
        batch = datamodule.batch_transform(tuple(t[start : start + chunk] for t in encoded.inputs))
        values = datamodule.decode(task(*batch)).double().reshape(len(batch[0]), -1).cpu()
        rows += [
            (n, *map(float, v)) for n, v in zip(names[start : start + chunk], values, strict=True)
        ]
    return [datamodule.columns[0], *targets], rows


def encode(task, datamodule, input: str | None, text: str | None) -> Encoded:  # noqa: A002
    """The raw inputs as the network reads them: the data module's `encode`, or for a graph
    (model=graph) given an `.npz` file, its arrays by the graph's input names."""
    import torch

    from nnlab.data.base import Encoded, input_file

    names = getattr(task.net, "input_names", None)
    path = input_file(input) if text is None else None
    if names is None or path is None or path.suffix != ".npz":
        return datamodule.encode([text] if text is not None else input)
    import numpy as np

    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"input: {path} is not a readable .npz file ({exc})") from None
    missing = [n for n in names if n not in arrays.files]
    if missing:
        raise UserError(
            f"input: {path} has no array {', '.join(missing)}; the network's inputs are "
            f"{', '.join(names)} (np.savez(path, {'=..., '.join(names)}=...))"
        )
    tensors = []
    for name in names:
        value = torch.as_tensor(arrays[name])
        tensors.append(value.float() if value.is_floating_point() else value)
    if len({len(t) for t in tensors}) != 1:
        sizes = ", ".join(f"{n} {len(t)}" for n, t in zip(names, tensors, strict=True))
        raise UserError(f"input: {path}'s arrays hold different numbers of rows ({sizes})")
    return Encoded(tuple(tensors), [f"row{i}" for i in range(len(tensors[0]))])


@no_grad
def predict_outputs(task, datamodule, encoded: Encoded, chunk: int = 256):
    """Rows of (name, each output's prediction): task=multi_output. A classifying output gives
    its class and that class's probability (a binary one: 0/1 and the positive class's
    probability), another its value(s)."""
    names = encoded.names or [str(i) for i in range(len(encoded.inputs[0]))]
    header, rows = [datamodule.columns[0]], []
    for name, spec in task.specs.items():
        loss = spec.get("loss", "mse")
        if loss in ("cross_entropy", "binary_cross_entropy"):
            header += [name, f"p_{name}"]
        else:
            width = int(spec.get("width") or 1)
            header += [name] if width == 1 else [f"{name}_{i + 1}" for i in range(width)]
    for start in range(0, len(names), chunk):
        batch = datamodule.batch_transform(tuple(t[start : start + chunk] for t in encoded.inputs))
        scores = {k: v.cpu() for k, v in task.scores(task(*batch)).items()}
        for i, sample in enumerate(names[start : start + chunk]):
            row: list = [sample]
            for name, spec in task.specs.items():
                p = scores[name][i]
                loss = spec.get("loss", "mse")
                if loss == "cross_entropy":
                    k = int(p.argmax())
                    row += [k, float(p[k])]
                elif loss == "binary_cross_entropy":
                    row += [int(p > 0.5), float(p)]
                else:
                    row += [float(v) for v in p.reshape(-1)]
            rows.append(tuple(row))
    return header, rows


def layer_names(net: torch.nn.Module) -> list[str]:
    return [name for name, _ in net.named_modules() if name]


@no_grad
def extract_features(task, datamodule, encoded: Encoded, layer: str, chunk: int = 256):
    """(what was captured, its activations (N, ...) as a numpy array): the output of the layer
    named `layer` (a name of `task.net.named_modules()`), or, for `penultimate` / empty, the
    input of the network's last layer with weights (what its classifier or regressor reads)."""
    import numpy as np

    net = task.net
    modules = dict(net.named_modules())
    if layer in ("", "penultimate"):
        weighted = [n for n, m in modules.items() if n and not list(m.children())]
        weighted = [n for n in weighted if any(True for _ in modules[n].parameters())]
        if not weighted:
            raise UserError("features: this network has no layer with weights to read before")
        what, target, pre = f"the input of {weighted[-1]}", modules[weighted[-1]], True
    elif layer in modules and layer:
        what, target, pre = layer, modules[layer], False
    else:
        raise UserError(
            f"features: no layer {layer!r} in {type(net).__name__}; its layers are: "
            f"{', '.join(layer_names(net))} (or features=penultimate)"
        )
    captured: list[torch.Tensor] = []

    def keep(value):
        while isinstance(value, tuple | list):  # (outputs, state) of recurrent layers
            value = value[0]
        captured.append(value.detach().float().cpu())

    if pre:
        handle = target.register_forward_pre_hook(lambda m, args: keep(args))
    else:
        handle = target.register_forward_hook(lambda m, args, out: keep(out))
    try:
        n = len(encoded.inputs[0])
        for start in range(0, n, chunk):
            batch = datamodule.batch_transform(
                tuple(t[start : start + chunk] for t in encoded.inputs)
            )
            task(*batch)
    finally:
        handle.remove()
    return what, np.concatenate([c.numpy() for c in captured])


def generate(task, datamodule, prompt, length, temperature, top_k, seed) -> dict:
    """Language-model runs: text sampled after the prompt, with the settings that made it
    (typed and checked with the command's arguments: `main`'s annotations)."""
    settings = {"length": length, "temperature": float(temperature), "top_k": top_k, "seed": seed}
    return {**task.generate(datamodule, prompt or "", **settings), **settings}


# The arguments' types are their declaration (checked before anything runs); their defaults and
# meanings are in conf/predict.yaml (what --help prints).
@command("predict")
def main(
    run: str | None,
    input: str | None,  # noqa: A002 (the CLI's word)
    text: str | None,
    ckpt: str,
    out: str | None,
    steps: NonNegativeInt,
    column: str | None,
    prompt: str | None,
    length: PositiveInt,
    temperature: PositiveFloat,
    top_k: PositiveInt | None,
    seed: Seed,
    features: str | None,
    overrides: list[str],
) -> Path:
    run_dir = Run.open(run)
    cfg = run_config(run_dir, overrides)
    if column:  # the CSV column the series is read from
        OmegaConf.update(cfg, "data.column", column, force_add=True)
    task, path = load_task(run_dir, cfg, ckpt)
    datamodule = build(cfg.data, "data")
    datamodule.load_artifacts(run_dir.root)
    if features is not None and str(features).lower() in ("null", "none"):
        features = None
    if features is not None:  # a layer's activations, for the feature-extractor recipe
        if callable(getattr(task, "generate", None)):
            raise UserError("features: not for language-model runs (they generate text)")
        encoded = encode(task, datamodule, input, text)
        what, values = extract_features(task, datamodule, encoded, str(features).strip())
        target = output_dir(run_dir, out, f"predictions/{timestamp()}")
        import numpy as np

        np.save(target / "features.npy", values)
        names = encoded.names or [str(i) for i in range(len(values))]
        write_rows(target / "features_index.csv", ["row", "input"], list(enumerate(names)))
        print(f"Features: {what}, shape {tuple(values.shape)}")
        print(f"Wrote {target / 'features.npy'}")
        return target
    if callable(getattr(task, "generate", None)):  # a language model: text from a prompt
        sample = generate(task, datamodule, prompt, length, temperature, top_k, seed)
        target = output_dir(run_dir, out, f"{PREDICTIONS}/{timestamp()}")  # only once it worked
        path = target / "generated.json"
        path.write_text(json.dumps(sample, indent=1, ensure_ascii=False), encoding="utf-8")
        print(sample["text"])
        print(f"Wrote {path}")
        return target
    if prompt is not None:
        raise UserError(f"prompt: {type(task).__name__} does not generate text; prompt= is for language-model runs (task=language_model)")  # fmt: skip
    encoded = encode(task, datamodule, input, text)
    forecasting = datamodule.horizon is not None  # else a classifier (datamodule.classes)
    if forecasting:  # one step ahead, then recursively
        rows = forecast(task, datamodule, encoded, steps)
        header = ["kind", "t", "column", "target", "prediction"]
    elif task.target_kind == "outputs":  # several outputs by name (model=graph)
        header, rows = predict_outputs(task, datamodule, encoded)
    elif task.target_kind == "values":  # regression on independent samples (tables)
        header, rows = regress(task, datamodule, encoded)
    else:
        header, rows = classify(task, datamodule, encoded)
    target = output_dir(run_dir, out, f"{PREDICTIONS}/{timestamp()}")
    if forecasting:
        plot_series(datamodule, encoded.raw, rows, target / "forecast.png")
    write_rows(target / "predictions.csv", header, rows)
    width = 5 if forecasting else 4
    title = f"{path.name} on {input or text or 'the test split'}"
    show(header[:width], [r[:width] for r in rows], title)
    print(f"Wrote {target / 'predictions.csv'}")
    return target


def timestamp() -> str:  # unique enough that two predictions never share a folder
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")


if __name__ == "__main__":
    main()
