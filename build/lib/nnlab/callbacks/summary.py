"""A Keras-style model summary: every layer, its output shape and its parameter count.

    Layer (type)                      Output shape           Params
    features.c1 (Conv2d)              (B, 6, 28, 28)            156
    ...
    Total params: 61,706   Trainable: 61,706   Non-trainable: 0

The shapes come from one forward pass of the example input (any model family: CNNs, the MLP,
recurrent nets); the callback prints the table when fitting starts and saves it as
`model_summary.txt` in the run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelSummary
from torch import nn

log = logging.getLogger("nnlab.summary")


def _shape(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return "(" + ", ".join(["B", *map(str, output.shape[1:])]) + ")"
    if isinstance(output, tuple | list) and output:
        return _shape(output[0])  # recurrent layers: (outputs, state)
    return "-"


def summarize(model: nn.Module, example: Any | None = None) -> str:
    """The summary table of `model`; output shapes when an example input is given."""
    rows: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    leaves = [
        (name, module)
        for name, module in model.named_modules()
        if name and not any(True for _ in module.children())
    ]
    if example is not None:
        hooks = []
        for name, module in leaves:

            def hook(module, args, output, name=name):
                params = sum(p.numel() for p in module.parameters())
                rows.append((f"{name} ({type(module).__name__})", _shape(output), params))
                seen.add(name)

            hooks.append(module.register_forward_hook(hook))
        was_training = model.training
        model.eval()  # batch-norm statistics and dropout stay untouched
        try:
            with torch.no_grad():
                model(*example) if isinstance(example, tuple) else model(example)
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()
    for name, module in leaves:  # layers the forward pass did not reach (or no example)
        if name not in seen:
            params = sum(p.numel() for p in module.parameters())
            rows.append((f"{name} ({type(module).__name__})", "?", params))
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    width = max([len("Layer (type)"), *(len(r[0]) for r in rows)]) + 2
    shape_width = max([len("Output shape"), *(len(r[1]) for r in rows)]) + 2
    rule = "=" * (width + shape_width + 14)
    lines = [
        f"Model: {type(model).__name__}",
        rule,
        f"{'Layer (type)':<{width}}{'Output shape':<{shape_width}}{'Params':>14}",
        rule,
    ]
    lines += [f"{n:<{width}}{s:<{shape_width}}{p:>14,}" for n, s, p in rows]
    lines += [
        rule,
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
        rule,
    ]
    return "\n".join(lines)


class ModelSummaryFile(ModelSummary):
    """Replaces Lightning's summary: the table of `summarize` for the task's network, logged at
    the start of fitting and saved as `<dirpath>/<filename>`."""

    def __init__(self, dirpath: str | None = None, filename: str = "model_summary.txt"):
        super().__init__()
        self.path = Path(dirpath) / filename if dirpath else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        net = getattr(pl_module, "net", pl_module)
        example = pl_module.example_input_array
        if example is not None:
            example = _to(example, pl_module)
        text = summarize(net, example)
        log.info("Model summary\n%s", text)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(text + "\n")


def _to(example: Any, pl_module: L.LightningModule) -> Any:
    if isinstance(example, torch.Tensor):
        example = example.to(pl_module.device)
        if getattr(pl_module, "channels_last", False) and example.dim() == 4:
            example = example.contiguous(memory_format=torch.channels_last)
        return example
    if isinstance(example, tuple | list):
        return tuple(_to(e, pl_module) for e in example)
    return example
