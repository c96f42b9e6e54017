"""Running under SLURM through submitit: one owner for the preemption / time-limit signal.

SLURM sends a signal some time before a job's limit (sbatch --signal). submitit asks for USR2
(SUBMITIT_PREEMPT_SIGNAL) and installs its own USR2 handler in every job it starts; Lightning's
SLURM environment listens on USR1 by default and, finding a handler already there, would not
install its own. Left alone, the two disagree and a requeued run starts again from nothing.

`SubmititSLURMEnvironment` (conf/cluster/slurm.yaml) makes nnlab's run manager the owner of
submitit's signal: the Preemption callback (callbacks/resilience.py) notices it, saves last.ckpt
at the end of the current batch (a batch boundary, so the resumed run is exact, where a save
inside the signal handler could land mid-step), runs `scontrol requeue`, and the run stops as
`preempted`. The requeued job runs the same trial in the same run directory; nnlab-train sees the
directory was used before and continues from its newest checkpoint (last.ckpt, periodic ones, or
a Lightning `hpc_ckpt_N.ckpt`), counting the resume in status.json.
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
    """Lightning's SLURM environment (ranks, nodes), with the requeue signal left to nnlab:
    `requeue_signal` is the signal the Preemption callback turns into a save and a requeue."""

    def __init__(
        self,
        auto_requeue: bool = True,
        requeue_signal: str | None = None,
        max_requeues: int | None = None,
    ):
        sig = (
            signal.Signals[f"SIG{requeue_signal.upper().removeprefix('SIG')}"]
            if requeue_signal
            else submitit_signal()
        )
        # Lightning's own requeue off: it would save inside the signal handler, mid-step.
        super().__init__(auto_requeue=False, requeue_signal=sig)
        self.nnlab_requeue_signal = sig if auto_requeue else None
        self.max_requeues = max_requeues
        if _is_submitit_handler(signal.getsignal(sig)):
            signal.signal(sig, signal.SIG_DFL)  # submitit's handler would requeue from scratch

    def requeue(self) -> str | None:
        """Requeue this job, unless it was requeued `max_requeues` times already (SLURM counts
        them in SLURM_RESTART_COUNT): a run that never fits its time limit must not come back
        forever. None on success, else why not."""
        done = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if self.max_requeues is not None and done >= self.max_requeues:
            return (
                f"requeued {done} times already, the limit "
                f"(hydra.launcher.max_num_timeout={self.max_requeues})"
            )
        return requeue_job()


def requeue_job() -> str | None:
    """`scontrol requeue` this SLURM job; None on success, else why not."""
    import subprocess

    job = os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = (
        f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if job
        else os.environ.get("SLURM_JOB_ID")
    )
    if not job_id:
        return "not a SLURM job"
    try:
        out = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    return None if out.returncode == 0 else (out.stderr.strip() or f"exit {out.returncode}")
