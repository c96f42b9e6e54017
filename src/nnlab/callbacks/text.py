"""Sample predictions on text data: a few test reviews with their predicted probability of being
positive, in TensorBoard (text) and in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import default_collate

from nnlab.data.imdb import IMDBDataModule
from nnlab.errors import ConfigError


class ReviewSamples(L.Callback):
    """After testing: `num_reviews` test reviews (chosen with `seed`, half negative and half positive) with the
    model's P(positive), logged as TensorBoard text `test/reviews` and saved as
    `<dirpath>/test_reviews.json`."""

    def __init__(
        self,
        dirpath: str | None = None,
        num_reviews: int = 8,
        max_chars: int = 600,
        seed: int = 0,
        filename: str = "test_reviews.json",
    ):
        self.dirpath = Path(dirpath) if dirpath else None
        self.num_reviews, self.max_chars, self.seed, self.filename = (
            num_reviews,
            max_chars,
            seed,
            filename,
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(trainer.datamodule, IMDBDataModule):
            raise ConfigError(
                "callbacks.review_samples",
                f"shows movie reviews, but the data are {type(trainer.datamodule).__name__}; "
                "use it with data=imdb",
            )

    def pick(self, labels: torch.Tensor) -> list[int]:
        """Indices of the sample: alternately negative and positive, seeded."""
        generator = torch.Generator().manual_seed(self.seed)
        pools = [
            (labels == c)
            .nonzero()
            .flatten()[torch.randperm(int((labels == c).sum()), generator=generator)]
            for c in (0, 1)
        ]
        chosen: list[int] = []
        for i in range(self.num_reviews):
            pool = pools[i % 2]
            if i // 2 < len(pool):
                chosen.append(int(pool[i // 2]))
        return chosen

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule  # an IMDBDataModule (setup): review_text gives a sample's text
        dataset = dm.datasets.get("test")
        if not trainer.is_global_zero or dataset is None:
            return
        labels = torch.stack([dataset[i][-1] for i in range(len(dataset))])
        chosen = self.pick(labels)
        if not chosen:
            return
        batch = default_collate([dataset[i] for i in chosen])
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            inputs = dm.batch_transform([t.to(pl_module.device) for t in batch[:-1]])
            probs = pl_module.scores(pl_module(*inputs)).float().cpu()
        pl_module.train(was_training)
        rows = []
        for i, p, y in zip(chosen, probs.tolist(), batch[-1].tolist(), strict=True):
            text = dm.review_text("test", i).replace("<br />", " ")
            rows.append(
                {
                    "index": i,
                    "label": "pos" if y == 1 else "neg",
                    "p_positive": round(p, 4),
                    "correct": (p > 0.5) == (y == 1),
                    "text": text
                    if len(text) <= self.max_chars
                    else text[: self.max_chars] + " ...",
                }
            )
        markdown = "\n\n".join(
            f"**P(positive) = {r['p_positive']:.3f}**, label **{r['label']}**"
            f"{'' if r['correct'] else ' (wrong)'}\n\n> {r['text']}"
            for r in rows
        )
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(
                    "test/reviews", markdown, global_step=trainer.global_step
                )
        if self.dirpath is not None:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            (self.dirpath / self.filename).write_text(
                json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8"
            )


class GeneratedSamples(L.Callback):
    """After every training epoch's validation: `num_samples` texts of `length`
    tokens generated from `prompts` (the task's `generate`, seeded so that epochs compare), as
    TensorBoard text `samples/generated` at the current step."""

    def __init__(
        self,
        prompts: list[str] | None = None,
        num_samples: int = 3,
        length: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 20,
        seed: int = 0,
    ):
        from nnlab.tasks.language_model import check_sampling

        check_sampling(temperature, top_k, length)
        self.prompts = list(prompts or [""])
        self.num_samples, self.length = num_samples, length
        self.temperature, self.top_k, self.seed = temperature, top_k, seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "generate", None)):
            raise ConfigError(
                "callbacks.generated_samples",
                f"generates text, but {type(pl_module).__name__} does not; use it with "
                "task=language_model",
            )

    def samples(self, pl_module: L.LightningModule, datamodule) -> str:
        blocks = []
        for i in range(self.num_samples):
            prompt = self.prompts[i % len(self.prompts)]
            out = pl_module.generate(
                datamodule, prompt, self.length, self.temperature, self.top_k, self.seed + i
            )
            text = out["text"].replace("\n", " / ")  # review ends, in one markdown paragraph
            blocks.append(f"**{prompt or '(a new review)'}** (seed {self.seed + i})\n\n> {text}")
        return "\n\n".join(blocks)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        if not fitting or not trainer.is_global_zero:  # one set per training epoch
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        markdown = self.samples(pl_module, trainer.datamodule)
        for logger in loggers:
            logger.experiment.add_text(
                "samples/generated", markdown, global_step=trainer.global_step
            )
