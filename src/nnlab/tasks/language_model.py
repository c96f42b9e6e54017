"""Language modelling: cross-entropy of the next token at every step; per split the loss (nats
per token) and, from the epoch's mean loss, bits per character (`level: char`, loss / ln 2) or
perplexity (`level: word`, exp(loss)). After testing, the same number for a unigram model of the
training text (`test/unigram_bpc` / `test/unigram_perplexity`), the baseline to beat.

`carry_state` (truncated backpropagation through time, with `data.tbptt`): each batch row starts
from the state the same row ended the previous batch with, detached (gradients stop at the batch
boundary); the state is reset at the start of every epoch, separately for training, validation
and testing. Checkpoints hold the training state: a run continued from a mid-epoch one (resume
after a kill, a requeued SLURM job) ends as the run that never stopped.

`generate` samples text from a prompt (nnlab-predict, and the samples callback).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from nnlab.errors import ConfigError
from nnlab.tasks.base import Task

LEVELS = {"char": "bpc", "word": "perplexity"}


def each_tensor(state, fn):
    """`fn` applied to a carried state: one tensor (RNN, GRU) or an LSTM's (h, c)."""
    return tuple(fn(s) for s in state) if isinstance(state, tuple) else fn(state)


def rows(state) -> int:
    return (state[0] if isinstance(state, tuple) else state).shape[1]


def check_sampling(temperature: float, top_k: int | None, length: int | None = None) -> None:
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not temperature > 0
    ):
        raise ConfigError("temperature", f"must be a number > 0 (1: the model's own distribution, lower: safer text), got {temperature!r}")  # fmt: skip
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError("top_k", f"must be a whole number >= 1 (or null: every token), got {top_k!r}")  # fmt: skip
    if length is not None and (
        isinstance(length, bool) or not isinstance(length, int) or length < 1
    ):
        raise ConfigError("length", f"must be a whole number >= 1 (tokens to generate), got {length!r}")  # fmt: skip


class LanguageModelTask(Task):
    """The net: `step(ids, state) -> (logits, state)` and `forward(ids) -> logits`
    (models/language.py). Batches `(x, y)`: ids and the next ids, (batch, steps) each."""

    target_kind = "tokens"

    def __init__(
        self, *args, level: Literal["char", "word"] = "char", carry_state: bool = False, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters({"level": level, "carry_state": carry_state})
        self.level, self.carry_state = level, bool(carry_state)
        self.metric = LEVELS[level]
        # Mean loss per token over the epoch: bpc / perplexity come from it, not from batches.
        self.val_metrics, self.test_metrics = MeanMetric(), MeanMetric()
        self.states: dict[str, object] = {}  # stage -> the state carried to its next batch

    def output_width(self, datamodule) -> int | None:
        if self.carry_state and not getattr(datamodule, "tbptt", False):
            raise ConfigError(
                "task.carry_state",
                "carries each row's state to the next batch, which needs batches that continue "
                "each other (data.tbptt: true); set task.carry_state: ${data.tbptt}",
            )
        return getattr(datamodule, "vocab_size", None)

    def setup(self, stage: str) -> None:
        if self.carry_state and self.trainer.world_size > 1:
            raise ConfigError(
                "task.carry_state",
                f"rows that continue batch to batch cannot be split between "
                f"{self.trainer.world_size} processes (each sees every world_size-th row); train "
                "on one device, or set data.tbptt=false",
            )

    def graph_blocker(self) -> str | None:
        if self.carry_state:
            return "the hidden state is carried from batch to batch (task.carry_state)"
        return None

    # -- the loss ------------------------------------------------------------------------------
    def losses(self, batch, stage: str) -> tuple[torch.Tensor, int]:
        """(mean cross-entropy per token, tokens) of a batch; the state carried when asked."""
        x, y = batch
        state = self.states.get(stage) if self.carry_state else None
        if state is not None and rows(state) != len(x):  # a batch of another size: start anew
            state = None
        elif state is not None:  # one read from a checkpoint is on the CPU
            state = each_tensor(state, lambda s: s.to(x.device))
        logits, state = self.net.step(x, state)
        if self.carry_state:
            self.states[stage] = each_tensor(state, torch.Tensor.detach)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        return loss, y.numel()

    def training_loss(self, batch) -> tuple[torch.Tensor, None]:
        return self.losses(batch, "train")[0], None

    def _evaluate(self, batch, metrics: MeanMetric, stage: str) -> None:
        loss, tokens = self.losses(batch, stage)
        metrics.update(loss.detach(), weight=tokens)

    def log_epoch(self, stage: str, nats: torch.Tensor | float, prefix: str = "") -> None:
        nats = torch.as_tensor(nats, dtype=torch.float32)
        value = nats / math.log(2) if self.level == "char" else nats.exp()
        if not prefix:
            self.log(f"{stage}/loss", nats, prog_bar=stage == "val")
        self.log(f"{stage}/{prefix}{self.metric}", value, prog_bar=stage == "val" and not prefix)

    # -- checkpoints: a mid-epoch one holds the state carried to the next training batch, so
    # that training continued from it (resume, a requeued job) reads that batch as the run
    # that never stopped did; at an epoch's end the next epoch starts from zero anyway.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if "train" in self.states:  # only with carry_state
            checkpoint["carried_state"] = {"train": self.states["train"]}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.carry_state and "train" in checkpoint.get("carried_state", {}):
            self.states["train"] = checkpoint["carried_state"]["train"]

    # -- epochs: states reset, metrics from the epoch's mean loss -------------------------------
    def on_train_epoch_start(self) -> None:
        self.states.pop("train", None)

    def on_validation_epoch_start(self) -> None:
        self.states.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self.states.pop("test", None)

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val", self.val_metrics.compute())
        self.val_metrics.reset()

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test", self.test_metrics.compute())
        self.test_metrics.reset()
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if hasattr(datamodule, "unigram_loss"):
            self.log_epoch("test", datamodule.unigram_loss("test"), prefix="unigram_")

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        datamodule,
        prompt: str | None,
        length: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 0,
    ) -> dict[str, object]:
        """`length` tokens sampled after `prompt` (datamodule.encode), one at a time, from the
        logits / `temperature`, among the `top_k` likeliest (None: all); `<unk>` and ids past
        the vocabulary are never drawn. The same seed gives the same text."""
        check_sampling(temperature, top_k, length)
        (ids,) = datamodule.encode(prompt).inputs
        was_training = self.training
        self.eval()
        generator = torch.Generator().manual_seed(int(seed))
        logits, state = self.net.step(ids.to(self.device))
        drawn = []
        banned = torch.zeros(logits.shape[-1], dtype=torch.bool)
        banned[len(datamodule.vocab) :] = True
        banned[datamodule.unk_id] = True
        for _ in range(length):
            scores = (logits[0, -1].float().cpu() / temperature).masked_fill(banned, -math.inf)
            if top_k is not None and top_k < len(scores):
                kth = scores.topk(top_k).values[-1]
                scores = scores.masked_fill(scores < kth, -math.inf)
            token = torch.multinomial(scores.softmax(-1), 1, generator=generator)
            drawn.append(int(token))
            logits, state = self.net.step(token.view(1, 1).to(self.device), state)
        self.train(was_training)
        return {
            "prompt": prompt,
            "continuation": datamodule.decode(torch.tensor(drawn)),
            # what the model read and wrote: the prompt as tokens (normalised, <unk>s shown)
            "text": datamodule.decode(torch.tensor([*ids[0, 1:].tolist(), *drawn])),
            "tokens": len(drawn),
        }
