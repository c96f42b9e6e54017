"""nnlab against a hand-written PyTorch loop, same model, data, optimizer and epochs, in one run.

    python scripts/bench.py configs=[mnist_lstm,sine_mlp] epochs=2 json=bench.json
    python scripts/bench.py configs=sine_mlp task.loop=lightning   # Lightning's own loop

Arguments are key=value as for every nnlab command (scripts/bench.yaml documents them; dotted
keys override nnlab's side). For each configuration both train for `epochs` epochs, each side in
a fresh process of its own (`processes=one`: both in this one); printed (a Markdown table) and
saved (JSON): seconds per training epoch (validation excluded; the first epoch too when there are
several: warm-up, cuDNN autotuning, graph capture), samples per second, nnlab / hand-loop time
ratio, and the final test metric of each. The hand loop is what a careful user writes: the whole
data set as tensors on the device, a seeded permutation each epoch (the one nnlab's in-memory
batcher draws: the same batches in the same order), forward / loss / backward /
clip / step with the optimizer as the config names it (torch's default implementation;
`hand_optimizer=nnlab`: the fused one nnlab picks on a CPU, so the ratio is the loop's own
overhead), the scheduler once per epoch, a validation pass after each epoch as nnlab's (untimed
on both sides). `baseline=dataloader`: a shuffling DataLoader over a TensorDataset instead. Each
side's epoch time is the median over its epochs and `rounds` (alternating runs). Real data sets
come from NNLAB_DATA_DIR (or data_dir=).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from nnlab import CONF_DIR
from nnlab.cli import parse_args
from nnlab.errors import UserError
from nnlab.heap import freeze_imports
from nnlab.resolvers import register_resolvers
from nnlab.runs import Run
from nnlab.schema import network_arguments
from nnlab.tasks.optimizers import build_optimizer
from nnlab.train import train

# name -> (experiment preset, overrides): the configurations the performance issue names.
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "mnist_rnn": ("mnist_rnn", []),  # the reference recipe: SimpleRNN(64), batch 8
    "mnist_lstm": ("mnist_lstm", ["data.batch_size=128"]),
    "imdb_mlp": ("imdb_mlp", []),
    "sine_mlp": ("sine_mlp", []),
    "alexnet_bf16": ("fashion_mnist_alexnet", ["trainer.precision=bf16-mixed"]),
}


def compose_run(experiment: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """The config nnlab-train builds for `experiment=... overrides`, writing under output_dir."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"experiment={experiment}", *overrides], return_hydra_config=True
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


class EpochTimer(L.Callback):
    """Seconds from each training epoch's start to the end of its last training batch (or to its
    validation, or its end, whichever comes first): training only, as the hand loop's clock."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start: float | None = None

    def _now(self) -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._now()

    def _stop(self) -> None:
        if self._start is not None:
            self.times.append(self._now() - self._start)
            self._start = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            self._stop()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._stop()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._stop()


def steady(runs: list[list[float]]) -> float:
    """The median epoch time of several runs' epochs, each run's first left out when it has
    more (the median: one epoch stalled by the machine moves a mean by 10-40% here)."""
    kept = sorted(t for times in runs for t in (times[1:] if len(times) > 1 else times))
    middle = len(kept) // 2
    return kept[middle] if len(kept) % 2 else (kept[middle - 1] + kept[middle]) / 2


def run_nnlab(cfg: DictConfig) -> dict:

    timer = EpochTimer()
    metrics = train(cfg, Run(cfg.paths.output_dir), extra_callbacks=[timer])
    return {"epoch_times": timer.times, "metrics": metrics}


def loss_and_metric(cfg: DictConfig):
    """The task's loss, and its test metric as (name, fn(outputs, targets) -> summed value)."""
    if "Regression" in cfg.task._target_:
        return F.mse_loss, ("test/mse", lambda out, y: F.mse_loss(out, y, reduction="sum"))
    if cfg.task.get("binary"):
        return (
            lambda out, y: F.binary_cross_entropy_with_logits(out.squeeze(-1), y.float()),
            ("test/acc", lambda out, y: ((out.squeeze(-1) > 0).long() == y).sum()),
        )
    return F.cross_entropy, ("test/acc", lambda out, y: (out.argmax(-1) == y).sum())


def run_hand_loop(
    cfg: DictConfig, device: torch.device, baseline: str, hand_optimizer: str = "torch"
) -> dict:
    """The plain PyTorch loop a user would write for the same configuration, in a process as a
    script without Lightning has it: importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1,
    a CUDA check in every optimizer step on a machine without CUDA (nnlab.tasks.loops)."""
    saved = os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    try:
        return _hand_loop(cfg, device, baseline, hand_optimizer)
    finally:
        if saved is not None:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = saved


def _hand_loop(cfg: DictConfig, device: torch.device, baseline: str, hand_optimizer: str) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    dm = instantiate(cfg.data)
    # before the data's setup, as nnlab-train does
    net = instantiate(network_arguments(cfg.model)).to(device)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    channels_last = bool(cfg.task.get("channels_last"))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if hand_optimizer == "nnlab":  # the implementation nnlab picks (tasks/optimizers.py)
        optimizer = build_optimizer(cfg.task.optimizer, net.parameters(), device)
    else:  # as the config names it, torch's default implementation: what a user writes
        optimizer = instantiate(cfg.task.optimizer)(params=net.parameters())
    scheduler = instantiate(cfg.task.scheduler)(optimizer=optimizer) if cfg.task.scheduler else None
    loss_fn, (metric_name, metric_fn) = loss_and_metric(cfg)
    clip = cfg.trainer.get("gradient_clip_val")
    bf16 = str(cfg.trainer.precision).startswith("bf16")
    batch_size, shuffle = int(cfg.data.batch_size), bool(cfg.data.get("shuffle", True))

    train_tensors = [t.to(device) for t in dm.datasets["train"].tensors]
    test_tensors = [t.to(device) for t in dm.datasets["test"].tensors]
    n = len(train_tensors[0])

    # The same sample order as nnlab's in-memory batcher (a seeded permutation per epoch).
    loader = dm.train_dataloader()
    same_order = getattr(loader, "order", None)

    def batches(epoch: int):
        if baseline == "dataloader":
            loader = torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(*dm.datasets["train"].tensors),
                batch_size=batch_size,
                shuffle=shuffle,
            )
            for batch in loader:
                yield [t.to(device, non_blocking=True) for t in batch]
            return
        if same_order is not None:
            order = same_order(epoch).to(device)
        else:
            order = torch.randperm(n, device=device) if shuffle else torch.arange(n, device=device)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield [t[idx] for t in train_tensors]

    def forward(x):
        (x,) = dm.batch_transform((x,))  # e.g. IMDB's bool multi-hot rows -> floats
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return net(x)

    val_tensors = [t.to(device) for t in dm.datasets["val"].tensors] if "val" in dm.datasets else []
    eval_batch = int(cfg.data.get("eval_batch_size") or batch_size)

    def in_order(tensors: list[torch.Tensor], size: int):
        """(inputs, targets) batches of `size`, in order."""
        for i in range(0, len(tensors[0]) if tensors else 0, size):
            yield (t[i : i + size] for t in tensors)

    @torch.no_grad()
    def validate() -> None:
        """What nnlab does between epochs, untimed on both sides (its after-effects are not:
        the next epoch's first step starts with the caches another pass has filled)."""
        net.eval()
        for x, y in in_order(val_tensors, eval_batch):
            loss_fn(forward(x).float(), y)
        net.train()

    times = []
    for epoch in range(int(cfg.trainer.max_epochs)):
        net.train()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x, y in batches(epoch):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(forward(x).float(), y)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if scheduler is not None:
            scheduler.step()
        validate()
    net.eval()
    with torch.no_grad():
        test_batches = in_order(test_tensors, batch_size)
        total = sum(float(metric_fn(forward(x).float(), y)) for x, y in test_batches)
    metrics = {metric_name: total / len(test_tensors[0])}
    return {"epoch_times": times, "metrics": metrics, "samples": n}


def run_side(name: str, args, device: torch.device, side: str) -> dict:
    """One side (`hand` or `nnlab`) of one configuration, in this process. Both sides run with
    the imported modules frozen out of the garbage collector's passes, as nnlab's commands do
    (nnlab.heap): a hand-written script imports torch alone, not the ~500k objects of Lightning,
    torchmetrics and Hydra that this process holds."""
    freeze_imports()
    experiment = CONFIGS[name][0]
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        cfg = compose_run(experiment, side_overrides(name, args, device), workdir)
        if side == "hand":
            OmegaConf.resolve(cfg)
            return run_hand_loop(cfg, device, args.baseline, args.hand_optimizer)
        run = run_nnlab(cfg)
        metrics = {k: float(v) for k, v in run["metrics"].items() if isinstance(v, int | float)}
        return {"epoch_times": run["epoch_times"], "metrics": metrics}
    finally:
        GlobalHydra.instance().clear()
        shutil.rmtree(workdir, ignore_errors=True)


def side_overrides(name: str, args, device: torch.device) -> list[str]:
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    return [
        *CONFIGS[name][1],
        f"trainer.max_epochs={args.epochs}",
        f"trainer.accelerator={accelerator}",
        "logger=none",
        *args.set,
    ]


def run_side_alone(name: str, args, side: str) -> dict:
    """One side in a fresh process of its own: neither side inherits the other's heap (the
    allocator's state moved a side's time by up to ~20%) or warmed caches."""
    with tempfile.TemporaryDirectory(prefix="bench-side-") as tmp:
        out = Path(tmp) / f"{side}.json"
        command = [sys.executable, __file__, f"configs=[{name}]", f"side={side}", f"json={out}"]
        proc = subprocess.run([*command, *args.passed_on], stdout=subprocess.DEVNULL)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{name}: the {side} side failed (exit {proc.returncode})")
        return json.loads(out.read_text())


def bench(name: str, args, device: torch.device) -> dict:
    """`rounds` runs of each side, alternating (hand, nnlab, hand, ...): a machine that slows
    down for a while slows both."""
    hands, ours_runs = [], []
    for _ in range(args.rounds):
        for side, runs in (("hand", hands), ("nnlab", ours_runs)):
            if args.processes == "separate":
                runs.append(run_side_alone(name, args, side))
            else:
                runs.append(run_side(name, args, device, side))
    samples = hands[-1]["samples"]
    metric = next(iter(hands[-1]["metrics"]))
    experiment = CONFIGS[name][0]
    result = {
        "config": name,
        "experiment": experiment,
        "overrides": side_overrides(name, args, device),
        "metric": metric,
        "processes": args.processes,
        "rounds": args.rounds,
        "hand_optimizer": args.hand_optimizer,
    }
    for side, runs in (("nnlab", ours_runs), ("hand", hands)):
        epoch = steady([r["epoch_times"] for r in runs])
        value = runs[-1]["metrics"].get(metric)  # every round trains alike
        result[side] = {
            "epoch_s": epoch,
            "samples_per_s": samples / epoch,
            metric: None if value is None else float(value),
            "epoch_times": [r["epoch_times"] for r in runs],
        }
    result["ratio"] = result["nnlab"]["epoch_s"] / result["hand"]["epoch_s"]
    return result


def environment(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def table(results: list[dict]) -> str:
    lines = [
        "| config | metric | nnlab s/epoch | hand s/epoch | nnlab / hand | nnlab samples/s "
        "| hand samples/s | nnlab metric | hand metric |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        a, b, m = r["nnlab"], r["hand"], r["metric"]

        def fmt(v):
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

        lines.append(
            f"| {r['config']} | {m} | {a['epoch_s']:.3f} | {b['epoch_s']:.3f} | "
            f"{r['ratio']:.2f} | {a['samples_per_s']:,.0f} | {b['samples_per_s']:,.0f} | "
            f"{fmt(a[m])} | {fmt(b[m])} |"
        )
    return "\n".join(lines)


def arguments(argv: list[str]) -> argparse.Namespace:
    """key=value words (scripts/bench.yaml), checked; dotted keys go to nnlab's side."""
    options, overrides = parse_args(
        argv, "bench", entry=Path(__file__).with_name("bench.yaml"), prog="scripts/bench.py"
    )
    raw = str(options["configs"] or "").strip("[]")
    names = [n.strip() for n in raw.split(",") if n.strip()]
    names = list(CONFIGS) if names == ["all"] else names
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        raise UserError(
            f"configs: unknown configuration {(unknown or [raw])[0]!r}; choose from "
            f"{', '.join(CONFIGS)} or all"
        )
    try:
        epochs = int(options["epochs"])
        rounds = int(options["rounds"])
        threads = int(options["threads"]) if options["threads"] else None
    except ValueError as exc:
        raise UserError(f"epochs/rounds/threads: expected a whole number ({exc})") from None
    for key, value in (("epochs", epochs), ("rounds", rounds)):
        if value < 1:
            raise UserError(f"{key}: must be >= 1, got {value}")
    for key, choices in (
        ("device", ("auto", "cpu", "cuda")),
        ("baseline", ("tensors", "dataloader")),
        ("processes", ("separate", "one")),
        ("side", ("both", "hand", "nnlab")),
        ("hand_optimizer", ("torch", "nnlab")),
    ):
        if options[key] not in choices:
            raise UserError(f"{key}: {options[key]!r}; choose one of {', '.join(choices)}")
    return argparse.Namespace(
        configs=names,
        epochs=epochs,
        rounds=rounds,
        hand_optimizer=options["hand_optimizer"],
        device=options["device"],
        baseline=options["baseline"],
        data_dir=options["data_dir"],
        threads=threads,
        set=overrides,
        json=Path(options["json"]) if options["json"] else None,
        processes=options["processes"],
        side=options["side"],
        # what a side run in its own process is given besides its config, side and json
        passed_on=[
            w
            for w in argv
            if w.split("=", 1)[0] not in {"configs", "side", "json", "processes", "rounds"}
        ],
    )


def main(argv: list[str] | None = None) -> int:
    try:
        args = arguments(sys.argv[1:] if argv is None else argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    names = args.configs
    if args.data_dir:
        os.environ["NNLAB_DATA_DIR"] = str(Path(args.data_dir).resolve())
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        print("error: device: cuda, but there is no CUDA device here", file=sys.stderr)
        return 2
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and cuda) else "cpu"
    )

    if args.side != "both":  # one side of one configuration, for a parent bench.py
        (name,) = names
        run = run_side(name, args, device, args.side)
        if args.json:
            args.json.write_text(json.dumps(run) + "\n")
        return 0

    results = []
    for name in names:
        if name == "alexnet_bf16" and device.type != "cuda":
            print(
                f"skipping {name}: AlexNet at 227x227 in bf16 is a GPU benchmark", file=sys.stderr
            )
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        results.append(bench(name, args, device))
    report = {"environment": environment(device), "epochs": args.epochs, "results": results}
    print(table(results))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
