"""nnlab-eval: evaluate a run's checkpoint on its test (or validation) split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from nnlab.cli import checkpoint_config, command, load_datamodule, load_task, run_config
from nnlab.runs import EVAL_METRICS, Run, write_json


# The arguments' types are their declaration (checked before anything runs); their defaults and
# meanings are in conf/eval.yaml (what --help prints).
@command("eval")
def main(
    run: str | None,
    ckpt: str,
    split: Literal["test", "val"],
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"],
    overrides: list[str],
) -> dict:
    if run is None and ckpt not in ("best", "last"):  # a checkpoint alone: its saved config
        run_dir = None
        cfg = checkpoint_config(Path(ckpt).expanduser(), overrides)
    else:
        run_dir = Run.open(run)
        cfg = run_config(run_dir, overrides)
    task, path = load_task(run_dir, cfg, ckpt)
    datamodule = load_datamodule(cfg, "test" if split == "test" else "validate")
    import lightning as L  # here, not with the module: `nnlab-eval --help` answers without it

    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=cfg.trainer.get("precision", "32-true"),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        # the same share of the split as at training time (debug=limit and the like)
        limit_test_batches=cfg.trainer.get("limit_test_batches") or 1.0,
        limit_val_batches=cfg.trainer.get("limit_val_batches") or 1.0,
    )
    started = time.monotonic()
    evaluate = trainer.test if split == "test" else trainer.validate
    (metrics,) = evaluate(task, datamodule=datamodule)
    record = {
        **{k: float(v) for k, v in metrics.items()},
        "split": split,
        "checkpoint": str(path),
        "wall_time_s": round(time.monotonic() - started, 3),
    }
    # beside a bare checkpoint: <checkpoint name>.eval_metrics.json
    target = (
        run_dir.root / EVAL_METRICS if run_dir else path.with_name(f"{path.stem}.{EVAL_METRICS}")
    )
    write_json(target, record)
    print(f"Wrote {target}")
    return record


if __name__ == "__main__":
    main()
