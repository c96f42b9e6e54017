"""Benchmark of nnlab's sweeper (docs/search.md), run through the installed nnlab-train:

1. pruning: the same TPE search (32 trials of sine_mlp, conf/hparams_search/sine_mlp_optuna.yaml,
   or 16 of a shortened mnist_lstm, mnist_lstm_optuna.yaml; same sampler seed) without a pruner
   and with one: epochs trained and the best validation metric found;
2. asynchronous vs batch-synchronous workers: trials of unequal length (trainer.max_epochs in
   the search space), n_jobs=2, the same grid of trials both ways: wall time.

    python scripts/bench_search.py                      # both, defaults below
    python scripts/bench_search.py --only prune --trials 32 --epochs 20 --pruner median
    python scripts/bench_search.py --only prune --search mnist_lstm --trials 16 --epochs 12 \
        --pruner successive_halving --pruner-args "{min_resource:1,reduction_factor:3}"      # needs NNLAB_DATA_DIR (MNIST)
    python scripts/bench_search.py --only async --async-trials 8

Prints a Markdown table per part and writes the numbers as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
QUIET = ["logger=none", "callbacks=none", "print_config=false"]


def run_search(args: list[str], workdir: Path) -> dict:
    """One search in its own outputs folder: wall time, epochs trained, best value, states."""
    import optuna

    from nnlab.search.storage import open_storage

    env = {**os.environ, "NNLAB_OUTPUT_DIR": str(workdir / "outputs"), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    proc = subprocess.run(
        [str(BIN / "nnlab-train"), *args, *QUIET],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"nnlab-train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    (sweep,) = [p for p in (workdir / "outputs").glob("multiruns/*/*") if p.is_dir()]
    info = json.loads((sweep / "search.json").read_text())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=info["study_name"], storage=open_storage(info["storage"]))
    epochs = 0
    for t in study.trials:
        run = Path(t.user_attrs["run_dir"])
        if (run / "metrics.json").is_file():
            epochs += int(json.loads((run / "metrics.json").read_text())["epochs"])
        else:  # a failed trial: the epochs it validated before it failed
            epochs += len(t.intermediate_values)
            status = json.loads((run / "status.json").read_text())
            print(f"trial {t.number} {t.state.name}: {status.get('error')}", flush=True)
    states = [t.state.name for t in study.trials]
    return {
        "wall_s": round(wall, 1),
        "epochs": epochs,
        "best": study.best_value,
        "trials": len(states),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
    }


def bench_pruning(n: int, epochs: int, pruner: str, pruner_args: str, search: str) -> dict:
    base = [
        f"experiment={search}",
        f"hparams_search={search}_optuna",
        f"hydra.sweeper.n_trials={n}",
    ]
    base += [f"trainer.max_epochs={epochs}", "hydra.sweeper.storage=null"]
    out = {}
    for name, extra in (
        ("unpruned", []),
        (pruner, [f"hydra.sweeper.pruner={pruner}", f"hydra.sweeper.pruner_args={pruner_args}"]),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            out[name] = run_search([*base, *extra], Path(tmp))
        print(f"{name}: {out[name]}", flush=True)
    return out


def bench_async(n: int, short: int, long: int, grid_seed: int) -> dict:
    # a grid: the same trials both ways, in the sampler's seeded order (seed 6: 2, 40, 2, 40,
    # 2, 40, 40, 2 epochs: each batch of two waits for a long trial while one worker idles)
    base = ["-m", "experiment=sine_mlp", "hydra/sweeper=nnlab", "hydra/sweeper/sampler=grid"]
    base += [
        f"hydra.sweeper.sampler.seed={grid_seed}",
        "optimized_metric=val/mse",
        "monitor=val/mse",
    ]
    base += ["hydra.sweeper.n_jobs=2", f"hydra.sweeper.n_trials={n}"]
    base += [f"trainer.max_epochs=choice({short},{long})"]
    base += ["seed=range(1," + str(n // 2 + 1) + ")"]
    out = {}
    for name, flag in (("asynchronous", "true"), ("batches", "false")):
        with tempfile.TemporaryDirectory() as tmp:
            out[name] = run_search([*base, f"hydra.sweeper.asynchronous={flag}"], Path(tmp))
        print(f"{name}: {out[name]}", flush=True)
    out["speedup"] = round(out["batches"]["wall_s"] / out["asynchronous"]["wall_s"], 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", choices=["prune", "async"], default=None)
    p.add_argument("--search", choices=["sine_mlp", "mnist_lstm"], default="sine_mlp")
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--pruner", default="median")
    p.add_argument("--pruner-args", default="{n_startup_trials:5,n_warmup_steps:3}")
    p.add_argument("--async-trials", type=int, default=8)
    p.add_argument("--short", type=int, default=2)
    p.add_argument("--long", type=int, default=40)
    p.add_argument("--grid-seed", type=int, default=6)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    results = {}
    if a.only in (None, "prune"):
        r = results["pruning"] = bench_pruning(
            a.trials, a.epochs, a.pruner, a.pruner_args, a.search
        )
        print(
            f"\n| {a.search}, {a.trials} trials x {a.epochs} epochs | epochs trained | best | pruned | wall s |"
        )
        print("|---|---|---|---|---|")
        for name, v in r.items():
            print(f"| {name} | {v['epochs']} | {v['best']:.5f} | {v['pruned']} | {v['wall_s']} |")
        u, q = r["unpruned"], r[a.pruner]
        print(
            f"\nepochs {q['epochs'] / u['epochs']:.0%} of unpruned; best {q['best'] / u['best'] - 1:+.1%}"
        )
    if a.only in (None, "async"):
        r = results["async"] = bench_async(a.async_trials, a.short, a.long, a.grid_seed)
        print(f"\n| {a.async_trials} trials, n_jobs=2, {a.short} or {a.long} epochs | wall s |")
        print("|---|---|")
        for name in ("asynchronous", "batches"):
            print(f"| {name} | {r[name]['wall_s']} |")
        print(f"\nspeed-up {r['speedup']}x")
    if a.out:
        a.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
