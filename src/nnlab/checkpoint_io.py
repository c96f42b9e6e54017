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
    from nnlab.runs import atomic_save  # (runs.py imports this module)

    try:
        atomic_save(checkpoint, Path(path))
    except (OSError, RuntimeError) as exc:
        # torch's zip writer says only "unexpected pos ..." when the disk fills up
        raise write_error(Path(path), exc) from exc


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
