"""Running under SLURM through submitit: one owner for the preemption / time-limit signal.

SLURM sends a signal some time before a job's limit (sbatch --signal). submitit asks for USR2
(SUBMITIT_PREEMPT_SIGNAL) and installs its own USR2 handler in every job it starts; Lightning's
SLURM environment listens on USR1 by default and, finding a handler already there, would not
install its own. Left alone, the two disagree and a requeued run starts again from nothing.

`SubmititSLURMEnvironment` (conf/cluster/slurm.yaml) makes Lightning the owner of submitit's
signal: on it, Lightning saves `hpc_ckpt_N.ckpt` in the run directory (the Trainer's
default_root_dir) and runs `scontrol requeue`; the requeued job runs the same trial in the same
run directory, where Lightning finds the checkpoint and resumes from it.
"""

from __future__ import annotations

import os
import signal

from lightning.fabric.plugins.environments import SLURMEnvironment


def submitit_signal() -> signal.Signals:
    """The signal submitit has SLURM send before a job's time limit (USR2 unless overridden)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return signal.Signals[f"SIG{name}"]


def _is_submitit_handler(handler) -> bool:
    owner = getattr(handler, "__self__", None)
    return type(owner).__module__.startswith("submitit.")


class SubmititSLURMEnvironment(SLURMEnvironment):
    """Lightning's SLURM environment, requeueing on submitit's signal instead of submitit."""

    def __init__(self, auto_requeue: bool = True, requeue_signal: str | None = None):
        sig = (
            signal.Signals[f"SIG{requeue_signal.upper().removeprefix('SIG')}"]
            if requeue_signal
            else submitit_signal()
        )
        super().__init__(auto_requeue=auto_requeue, requeue_signal=sig)
        if auto_requeue and _is_submitit_handler(signal.getsignal(sig)):
            # Lightning installs its handler (at fit) only where the signal has none.
            signal.signal(sig, signal.SIG_DFL)
