"""What the commands over a run directory share (nnlab-eval, nnlab-predict, nnlab-export):
`key=value` arguments, the run's config, its checkpoint and the task rebuilt from it."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from nnlab.config import build
from nnlab.errors import UserError
from nnlab.runs import Run, checkpoint_problem, register_resolvers

warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def parse_args(
    argv: list[str], usage: str, options: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """`key=value` words: the command's own `options` (with their defaults), and dotted keys
    (`data.batch_size=64`) as overrides of the run's config. `--help` prints `usage`."""
    if any(arg in ("-h", "--help") for arg in argv):
        print(usage.strip())
        sys.exit(0)
    values, overrides = dict(options), []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UserError(f"{arg}: arguments are key=value; see --help")
        if key in options:
            values[key] = value
        elif "." in key:
            overrides.append(arg)
        else:
            raise UserError(
                f"{key}: unknown argument; this command takes {', '.join(options)} (see --help)"
            )
    return values, overrides


def command(usage: str, options: dict[str, Any]) -> Callable:
    """A console entry point: parsed arguments in, one clear line and exit 2 on a UserError."""

    def wrap(fn: Callable[..., Any]) -> Callable[[], None]:
        @functools.wraps(fn)
        def main(argv: list[str] | None = None) -> Any:
            register_resolvers()
            try:
                values, overrides = parse_args(
                    sys.argv[1:] if argv is None else argv, usage, options
                )
                return fn(overrides=overrides, **values)
            except UserError as exc:
                print(f"error: {exc}", file=sys.stderr)
                sys.exit(exc.exit_code)

        return main

    return wrap


def run_config(run: Run, overrides: list[str]) -> DictConfig:
    cfg = run.config()
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    return cfg


def check_checkpoint(
    path: Path, model_cfg: DictConfig, key: str = "ckpt", owner: str = "this run"
) -> None:
    """A complete checkpoint file of the network `model_cfg` describes, or a UserError."""
    if not path.is_file():
        raise UserError(f"{key}: checkpoint {path} not found")
    problem = checkpoint_problem(path)
    if problem:
        raise UserError(f"{key}: {path} is damaged ({problem}); use another checkpoint (ckpt=last)")
    saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    net = (saved.get("hyper_parameters") or {}).get("net") or {}
    wanted = OmegaConf.to_container(model_cfg, resolve=True)
    if net.get("_target_") != wanted.get("_target_"):
        raise UserError(
            f"{key}: {path} holds a {net.get('_target_', 'non-nnlab')} network, but {owner} "
            f"uses {wanted.get('_target_')}; pass a checkpoint of the same network"
        )
    differ = sorted(k for k in set(net) | set(wanted) if net.get(k) != wanted.get(k))
    if differ:
        shown = ", ".join(f"model.{k}={net.get(k)!r} (here: {wanted.get(k)!r})" for k in differ)
        raise UserError(
            f"{key}: {path} was trained with {shown}; pass a checkpoint of the same network"
        )


def load_task(run: Run, cfg: DictConfig, ckpt: str | None):
    """The run's task with the checkpoint's weights; refuses a checkpoint of another network."""
    path = run.checkpoint(ckpt)
    check_checkpoint(path, cfg.model, owner=str(run.root))
    task_class = get_class(cfg.task._target_)
    try:
        task = task_class.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise UserError(
            f"ckpt: {path} does not fit {cfg.task._target_}: {exc}".splitlines()[0]
        ) from exc
    return task.eval(), path


def load_datamodule(cfg: DictConfig, stage: str = "test"):
    datamodule = build(cfg.data, "data")
    datamodule.prepare_data()
    datamodule.setup(stage)
    return datamodule


def output_dir(run: Run, out: str | None, kind: str) -> Path:
    """`out` if given, else <run>/<kind>/ (created)."""
    path = Path(out).expanduser() if out else run.root / kind
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"out: cannot create {path}: {exc.strerror}; choose another out=") from exc
    return path
