"""Score a one-step forecaster's recursive multi-step forecast on the test windows of its run's
series (each prediction fed back as input, as `nnlab-predict steps=N` forecasts), to compare
with the direct multi-output head and the seq2seq decoder on the same series:

    python scripts/recursive_forecast.py RUN_DIR --horizon 8     # prints test MSE and MAE
"""

from __future__ import annotations

import argparse

import torch
from nnlab.lifecycle import load_datamodule, load_task
from omegaconf import OmegaConf

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--horizon", type=int, default=8)
    args = parser.parse_args()
    run = Run.open(args.run, key="run")
    cfg = run.config()
    task, _ = load_task(run, cfg, None)  # the best checkpoint, in eval mode
    datamodule = load_datamodule(OmegaConf.merge(cfg, {"data": {"horizon": args.horizon}}))
    x, y = datamodule.datasets["test"].tensors
    pred = datamodule.unscale(recursive_forecast(task, x, args.horizon))
    y = datamodule.unscale(y)
    mse, mae = torch.mean((pred - y) ** 2).item(), torch.mean((pred - y).abs()).item()
    print(
        f"recursive {args.horizon}-step forecast on {len(x)} test windows: MSE {mse:.4f}, MAE {mae:.4f}"
    )


if __name__ == "__main__":
    main()
