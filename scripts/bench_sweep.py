"""Sweep throughput: the same seed/lr sweep through hydra/launcher=packed, Hydra's basic launcher
and joblib, each as a user runs it (`nnlab-train -m ...` in a subprocess), timed end to end.

    python scripts/bench_sweep.py experiment=sine_mlp trials=32
    python scripts/bench_sweep.py experiment=mnist_lstm trials=16 baseline_trials=4 \
        trainer.max_epochs=1

(key=value arguments, as every nnlab command: scripts/bench_sweep.yaml; dotted keys go to each
trial's nnlab-train command line.)

Trials per hour = completed trials / wall seconds * 3600; the ratio is packed over each baseline.
Compare the same number of trials (the default): every launcher pays Python's start, the imports
and Hydra's composition once (~4 s here), so a baseline of fewer trials (baseline_trials=, to
shorten the measurement) spreads that over fewer trials and overstates the speed-up (32 sine
trials: 8.3x against 4 basic trials, 6.5x against 32, in runs of the same code). The table marks
such rows. Set OMP_NUM_THREADS=1 (one thread per process, as the README's numbers) before running.

The CPU seconds (user + system of the sweep's processes) and their ratio are printed as well: on a
machine other jobs share, wall time stretches with their load, CPU time much less (it still grows
somewhat with contention for caches and cores). Worker processes the sweep's process does not wait
for (joblib's may outlive it) are not counted.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LRS = ("1e-3", "2e-3", "5e-3", "1e-2")


def sweep_overrides(trials: int) -> list[str]:
    """`trials` jobs: seeds x 4 learning rates when it divides, else seeds only."""
    if trials % len(LRS) == 0 and trials >= len(LRS):
        seeds = ",".join(str(s) for s in range(1, trials // len(LRS) + 1))
        return [f"seed={seeds}", f"task.optimizer.lr={','.join(LRS)}"]
    return [f"seed={','.join(str(s) for s in range(1, trials + 1))}"]


def run(mode: str, trials: int, args, extra: list[str]) -> dict:
    launcher = {
        "packed": ["hydra/launcher=packed"],
        "basic": [],
        "joblib": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args['joblib_jobs']}"],
    }[mode]
    with tempfile.TemporaryDirectory(prefix=f"bench_sweep_{mode}_") as tmp:
        env = {**os.environ, "NNLAB_OUTPUT_DIR": tmp, "PYTHONUNBUFFERED": "1"}
        env.setdefault("OMP_NUM_THREADS", "1")
        command = [sys.executable, "-m", "nnlab.train", "-m", f"experiment={args['experiment']}"]
        command += [*launcher, *sweep_overrides(trials), "print_config=false", *extra]
        print("$", " ".join(command[2:]), flush=True)
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (used.ru_utime + used.ru_stime)
        if proc.returncode != 0:
            sys.exit(f"{mode} sweep failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        done = len(list(Path(tmp).glob("multiruns/*/*/*/metrics.json")))
    rate = done / wall * 3600
    print(
        f"  {mode}: {done}/{trials} trials in {wall:.1f} s (CPU {cpu:.1f} s) = {rate:.0f} trials/h",
        flush=True,
    )
    return {
        "mode": mode,
        "trials": trials,
        "completed": done,
        "wall_s": wall,
        "cpu_s": cpu,
        "per_hour": rate,
    }


def main(argv: list[str] | None = None) -> None:
    from nnlab.cli import parse_args
    from nnlab.errors import UserError, exit_on_user_error

    with exit_on_user_error():
        args, extra = parse_args(
            sys.argv[1:] if argv is None else argv,
            "bench_sweep",
            entry=Path(__file__).with_suffix(".yaml"),
            prog="scripts/bench_sweep.py",
        )
        try:
            for key in ("trials", "joblib_jobs"):
                args[key] = int(args[key])
            args["baseline_trials"] = int(args["baseline_trials"] or args["trials"])
        except ValueError as exc:
            raise UserError(
                f"trials / baseline_trials / joblib_jobs: whole numbers ({exc})"
            ) from None
    rows = []
    for mode in str(args["modes"]).strip("[]").split(","):
        trials = args["trials"] if mode == "packed" else args["baseline_trials"]
        rows.append(run(mode, trials, args, extra))
    packed = next((r for r in rows if r["mode"] == "packed"), None)
    print(
        "\n| launcher | trials | wall s | CPU s | trials/h | packed speed-up | by CPU time |"
        "\n|---|---|---|---|---|---|---|"
    )
    for r in rows:
        ratio = f"{packed['per_hour'] / r['per_hour']:.1f}x" if packed else ""
        by_cpu = ""
        if packed and packed["completed"] and r["completed"]:
            per_trial = r["cpu_s"] / r["completed"]
            by_cpu = f"{per_trial / (packed['cpu_s'] / packed['completed']):.1f}x"
        if packed and r["trials"] != packed["trials"]:
            ratio += f" (over {r['trials']} trials, not {packed['trials']}: overstated)"
        print(
            f"| {r['mode']} | {r['completed']}/{r['trials']} | {r['wall_s']:.0f} | "
            f"{r['cpu_s']:.0f} | {r['per_hour']:.0f} | {ratio if r is not packed else '1.0x'} | "
            f"{by_cpu if r is not packed else '1.0x'} |"
        )
    if args["json"]:
        Path(args["json"]).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
