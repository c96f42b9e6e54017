"""Score a one-step forecaster's recursive multi-step forecast on the test windows of its run's
series (each prediction fed back as input, as `nnlab-predict steps=N` forecasts), to compare
with the direct multi-output head and the seq2seq decoder on the same series:

    python scripts/recursive_forecast.py run=RUN_DIR horizon=8     # prints test MSE and MAE

(key=value arguments, as every nnlab command: scripts/recursive_forecast.yaml)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from nnlab.cli import load_datamodule, load_task, parse_args
from nnlab.errors import UserError, exit_on_user_error
from nnlab.runs import Run


@torch.no_grad()
def recursive_forecast(task, windows: torch.Tensor, horizon: int) -> torch.Tensor:
    """(n, window) -> (n, horizon), feeding each one-step prediction back in."""
    history, out = windows.clone(), []
    for _ in range(horizon):
        pred = task(history)[:, :1]
        out.append(pred)
        history = torch.cat([history[:, 1:], pred], dim=1)
    return torch.cat(out, dim=1)


def main(argv: list[str] | None = None) -> None:
    with exit_on_user_error():
        options, _ = parse_args(
            sys.argv[1:] if argv is None else argv,
            "recursive_forecast",
            run_overrides=False,
            entry=Path(__file__).with_suffix(".yaml"),
            prog="scripts/recursive_forecast.py",
        )
        try:
            horizon = int(options["horizon"])
        except ValueError:
            raise UserError(
                f"horizon: expected a whole number, got {options['horizon']!r}"
            ) from None
        run = Run.open(options["run"], key="run")
        cfg = run.config()
        task, _ = load_task(run, cfg, None)  # the best checkpoint, in eval mode
        datamodule = load_datamodule(OmegaConf.merge(cfg, {"data": {"horizon": horizon}}))
        x, y = datamodule.datasets["test"].tensors
        pred = datamodule.decode(recursive_forecast(task, x, horizon))
        y = datamodule.decode(y)
        mse, mae = torch.mean((pred - y) ** 2).item(), torch.mean((pred - y).abs()).item()
        print(
            f"recursive {horizon}-step forecast on {len(x)} test windows: MSE {mse:.4f}, MAE {mae:.4f}"
        )


if __name__ == "__main__":
    main()
