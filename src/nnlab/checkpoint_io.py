"""Checkpoint files: written atomically, checked before they are trusted.

torch and Lightning are imported when a checkpoint is first read or written, not with this module:
nnlab-report and `--help` import it (through nnlab.runs) and never touch a checkpoint."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nnlab.errors import UserError


def __getattr__(name: str) -> Any:
    """`AtomicCheckpointIO` subclasses Lightning's TorchCheckpointIO: the class is made when it is
    first asked for (`from nnlab.checkpoint_io import AtomicCheckpointIO`), with Lightning."""
    if name == "AtomicCheckpointIO":
        cls = _atomic_checkpoint_io()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _atomic_checkpoint_io() -> type:
    from lightning.fabric.plugins import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Checkpoints written to a temporary file in the same directory, flushed, fsynced and
        renamed over the target: a kill during a write never leaves a truncated checkpoint and
        never destroys the previous one."""

        save_checkpoint = _save_atomically

    AtomicCheckpointIO.__module__ = __name__
    AtomicCheckpointIO.__qualname__ = "AtomicCheckpointIO"
    return AtomicCheckpointIO


def _save_atomically(
    self: Any, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
) -> None:
    write_checkpoint(checkpoint, Path(path))


def write_checkpoint(checkpoint: dict[str, Any], path: Path, durable: bool = True) -> None:
    """torch.save, atomically; a failed write names the file and the space left for it."""
    from nnlab.runs import atomic_save  # (runs.py imports this module)

    try:
        atomic_save(checkpoint, path, durable=durable)
    except (OSError, RuntimeError) as exc:
        # torch's zip writer says only "unexpected pos ..." when the disk fills up
        raise write_error(path, exc) from exc


def save_task_checkpoint(
    path: Path, task: Any, datamodule: Any, state_dict: dict, epoch: int, step: int, **extra: Any
) -> None:
    """A checkpoint in Lightning's format written without a Trainer (packed trials), which
    `Task.load_from_checkpoint`, the commands and a resume read as a Trainer's; not fsynced."""
    import lightning as L

    checkpoint = {
        "epoch": epoch,
        "global_step": step,
        "pytorch-lightning_version": L.__version__,
        "state_dict": state_dict,
        "hparams_name": None,
        "hyper_parameters": dict(task.hparams),
        **extra,
    }
    if getattr(datamodule, "hparams", None):
        checkpoint["datamodule_hparams_name"] = "kwargs"
        checkpoint["datamodule_hyper_parameters"] = dict(datamodule.hparams)
    write_checkpoint(checkpoint, path, durable=False)


def write_error(path: Path, exc: BaseException) -> OSError:
    """An OSError naming the checkpoint that could not be written and the space left for it,
    which the commands report as one line (`nnlab.errors.file_error`)."""
    free = shutil.disk_usage(path.parent).free
    reason = f"{exc}".splitlines()[0] if str(exc) else type(exc).__name__
    code = getattr(exc, "errno", None) or errno.EIO
    return OSError(
        code,
        f"writing the checkpoint failed ({reason}) with {free / 2**20:.0f} MiB free on its "
        "disk; free some space there, or write runs to another disk (paths.log_dir or "
        "NNLAB_OUTPUT_DIR)",
        str(path),
    )


def checkpoint_problem(path: Path) -> str | None:
    """None when `path` is a complete checkpoint file, else what is wrong with it."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # truncated zip, garbage, empty file, unreadable
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return "not a Lightning checkpoint (no state_dict)"
    return None


def check_checkpoint(
    path: Path, model_cfg: DictConfig, key: str = "ckpt", owner: str = "this run"
) -> None:
    """A complete checkpoint file of the network `model_cfg` describes, or a UserError."""
    if not path.is_file():
        raise UserError(f"{key}: checkpoint {path} not found")
    problem = checkpoint_problem(path)
    if problem:
        raise UserError(f"{key}: {path} is damaged ({problem}); use another checkpoint (ckpt=last)")
    import torch

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


def load_initial_weights(net: Any, path: str | Path, key: str = "model.weights") -> None:
    """Keras' `weights=`: the network's weights from `path` before training, a checkpoint of
    nnlab's (its `net.` part) or a `.pt` file of a state dict (or a whole module) of the same
    network. A file that does not fit is a ConfigError naming `key`, the file and the first
    parameter that differs; nothing is loaded then."""
    import torch

    from nnlab.errors import ConfigError

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(key, f"{path} not found; give a checkpoint or a state-dict .pt file")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated, not a torch file, unpicklable
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise ConfigError(key, f"{path} cannot be read as torch weights ({reason})") from None
    if isinstance(saved, torch.nn.Module):
        saved = saved.state_dict()
    if isinstance(saved, dict) and isinstance(saved.get("state_dict"), dict):
        saved = saved["state_dict"]  # a Lightning checkpoint: the task's, the net under net.
    if not isinstance(saved, dict) or not all(isinstance(v, torch.Tensor) for v in saved.values()):
        raise ConfigError(
            key, f"{path} holds no state dict (a mapping of names to tensors) nor a checkpoint"
        )
    if saved and all(str(k).startswith("net.") for k in saved):
        saved = {str(k)[4:]: v for k, v in saved.items()}
    wanted = net.state_dict()
    problem = next(
        (
            f"{name}: {tuple(saved[name].shape)} in the file, {tuple(tensor.shape)} here"
            if name in saved
            else f"{name} is not in the file"
            for name, tensor in wanted.items()
            if name not in saved or saved[name].shape != tensor.shape
        ),
        None,
    )
    if problem is None and (extra := [k for k in saved if k not in wanted]):
        problem = f"{extra[0]} is in the file but not in this network"
    if problem is not None:
        raise ConfigError(
            key,
            f"{path} does not fit this network ({problem}); give weights saved from the "
            "same network (the same model config)",
        )
    net.load_state_dict(saved)
