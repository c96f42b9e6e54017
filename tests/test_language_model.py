"""Language models on IMDB text: the char/word streams from a generated aclImdb tree (rows that
continue batch to batch, targets shifted by one, vocabulary from the training text), the carried
and detached state of truncated BPTT, nnlab-train and nnlab-predict as a user runs them
(metrics, TensorBoard text, seeded generation, bad keys), and the presets on the real data."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_cli
from omegaconf import OmegaConf
from test_imdb import write_tree

from nnlab.data.imdb_lm import SEP, UNK, IMDBLanguageDataModule, chunks
from nnlab.errors import ConfigError, UserError
from nnlab.models.language import RecurrentLanguageModel
from nnlab.predict import main as predict_main
from nnlab.schema import check_args
from nnlab.tasks.language_model import LanguageModelTask

NET = {"_target_": "nnlab.models.language.RecurrentLanguageModel", "embedding_dim": 8, "hidden_size": 12}  # fmt: skip


@pytest.fixture
def mini_data(tmp_path) -> Path:
    data_dir = tmp_path / "data"
    write_tree(data_dir, per_folder=16)
    return data_dir


def module(data_dir: Path, **kwargs) -> IMDBLanguageDataModule:
    settings = {"level": "char", "vocab_size": 60, "seq_len": 8, "batch_size": 4,
                "max_train_chars": None, "max_eval_chars": 600, "download": False}  # fmt: skip
    return IMDBLanguageDataModule(data_dir=str(data_dir), **{**settings, **kwargs})


# -- the streams ---------------------------------------------------------------------------------
def test_chunks_cut_rows_that_continue_column_by_column():
    stream = torch.arange(30)
    windows = chunks(stream, 3, rows=2)  # rows of 13: [0..12], [12..24]; 4 windows each
    assert windows.shape == (8, 4)
    assert windows[0].tolist() == [0, 1, 2, 3] and windows[1].tolist() == [12, 13, 14, 15]
    assert windows[2].tolist() == [3, 4, 5, 6]  # row 0's next window, one batch of 2 later
    assert chunks(stream, 4, rows=None)[:, 0].tolist() == [0, 4, 8, 12, 16, 20, 24]


@pytest.mark.parametrize("level", ["char", "word"])
def test_batches_continue_row_by_row_with_shifted_targets(mini_data, level):
    dm = module(mini_data, level=level, vocab_size=60 if level == "char" else 40)
    dm.setup("fit")
    batches = [dm.batch_transform(b) for b in dm.train_dataloader()]
    assert len(batches) > 3 and all(x.shape == (4, 8) and x.dtype == torch.long for x, _ in batches)
    for x, y in batches:
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets: the inputs one token later
    for (_, y0), (x1, _) in zip(batches, batches[1:], strict=False):
        assert torch.equal(x1[:, 0], y0[:, -1])  # row i of batch n+1 continues row i of batch n
    rows = torch.cat([torch.cat([x, y[:, -1:]], 1)[:, :-1] for x, y in batches], 1)
    per_row = rows.shape[1]
    stream = dm.streams["train"].long()
    for i, row in enumerate(rows):  # each row is one contiguous stretch of the stream
        assert torch.equal(row, stream[i * per_row : (i + 1) * per_row])
    # without tbptt: the same windows, shuffled, independent
    shuffled = module(mini_data, level=level, tbptt=False, vocab_size=dm.vocab_size)
    shuffled.setup("fit")
    assert shuffled.shuffle and not dm.shuffle
    x, y = shuffled.batch_transform(next(iter(shuffled.train_dataloader())))
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_vocabulary_comes_from_the_training_text(mini_data):
    words = module(mini_data, level="word", vocab_size=100)
    words.setup("fit")
    assert words.vocab[:2] == ["<unk>", "<eos>"] and words.vocab[2] in ("the", "movie", "film", "plot", "actor", "scene", "story", "was", "it", "and")  # fmt: skip
    assert "zyzzyva" not in words.vocab  # only in the test split
    assert UNK in words.streams["test"].tolist() and UNK not in words.streams["train"].tolist()
    top = module(mini_data, level="word", vocab_size=5)
    top.setup("fit")
    assert top.vocab == words.vocab[:5]  # top-k words + <unk>, <eos>
    chars = module(mini_data)
    chars.setup("fit")
    assert chars.vocab[:2] == ["<unk>", "\n"] and chars.vocab[2] == " " and "z" not in chars.vocab
    ends = chars.streams["train"].tolist().count(SEP)
    assert ends == len([t for t in chars.decode(chars.streams["train"]).split("\n") if t])
    assert chars.unigram_loss("test") > 0


def test_validation_reviews_are_not_training_reviews(mini_data):
    dm = module(mini_data, level="word", vocab_size=100)
    dm.setup("fit")
    val = set(dm.decode(dm.streams["val"]).strip().split("\n"))
    train = set(dm.decode(dm.streams["train"]).strip().split("\n"))
    assert val and train and not val & train
    assert len(dm.streams["val"]) <= 600  # max_eval_chars bounds the text (characters >= words)


def test_prompts_encode_and_decode(mini_data, tmp_path):
    dm = module(mini_data, level="word", vocab_size=100)
    dm.setup("fit")
    (ids,) = dm.encode("The MOVIE was<br />boring zyzzyva").inputs
    assert ids[0, 0] == SEP and dm.decode(ids[0, 1:]) == "the movie was boring <unk>"
    assert dm.encode("").inputs[0].tolist() == [[SEP]]  # a review from its start
    with pytest.raises(UserError, match="^prompt: 'zyzzyva qwerty' has no word"):
        dm.encode("zyzzyva qwerty")
    dm.save_artifacts(tmp_path)
    fresh = IMDBLanguageDataModule(data_dir=str(tmp_path / "nowhere"), level="word")
    fresh.load_artifacts(tmp_path)  # no data needed
    assert fresh.vocab == dm.vocab and torch.equal(fresh.encode("the plot").inputs[0], dm.encode("the plot").inputs[0])  # fmt: skip
    with pytest.raises(UserError, match="char-level"):
        IMDBLanguageDataModule(level="char").load_artifacts(tmp_path)


def test_bad_settings_name_their_key(mini_data):
    for key, kwargs in (
        ("data.level", {"level": "byte"}),
        ("data.vocab_size", {"vocab_size": 2}),
        ("data.seq_len", {"seq_len": 0}),
        ("data.max_train_chars", {"max_train_chars": -5}),
    ):
        with pytest.raises(ConfigError, match=f"^{key}"):  # the schema (nnlab.schema)
            check_args(IMDBLanguageDataModule, "data", data_dir=str(mini_data), **kwargs)
    with pytest.raises(ConfigError, match="^data.seq_len: the val text"):
        module(mini_data, seq_len=500).setup("fit")
    with pytest.raises(ConfigError, match="^data.max_eval_chars"):
        module(mini_data, max_eval_chars=10**7).setup("fit")
    with pytest.raises(ConfigError, match="^model.cell"):
        check_args(RecurrentLanguageModel, "model", vocab_size=10, cell="jzs1")
    with pytest.raises(ConfigError, match="^model.bidirectional"):
        check_args(RecurrentLanguageModel, "model", vocab_size=10, bidirectional=True)


# -- truncated BPTT: the state is carried, detached, reset -----------------------------------------
def test_state_is_carried_between_batches_and_detached(mini_data):
    torch.manual_seed(0)
    dm = module(mini_data)
    dm.setup("fit")
    task = LanguageModelTask({**NET, "vocab_size": dm.vocab_size}, carry_state=True)
    task.check_data(dm)
    batches = [dm.batch_transform(b) for b in dm.train_dataloader()][:3]
    losses = []
    for x, y in batches:
        loss, _ = task.training_loss((x, y))
        loss.backward()  # a state still attached to the last batch's graph would fail here
        state = task.states["train"]
        assert all(s.grad_fn is None and not s.requires_grad for s in state)
        losses.append(loss.detach())
    # Batch 3 with the carried state scores as the three batches read as one sequence do.
    whole = torch.cat([x for x, _ in batches], 1)
    targets = torch.cat([y for _, y in batches], 1)
    with torch.no_grad():
        logits = task.net(whole)[:, -8:]
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, -8:].reshape(-1))  # fmt: skip
    assert torch.allclose(losses[-1], expected, atol=1e-5)
    task.on_train_epoch_start()  # a new epoch starts from zero
    assert "train" not in task.states
    with torch.no_grad():
        again, _ = task.training_loss(batches[-1])
        from_zero = task.net(batches[-1][0])
    assert not torch.allclose(again, losses[-1])
    assert torch.allclose(again, torch.nn.functional.cross_entropy(from_zero.reshape(-1, dm.vocab_size), batches[-1][1].reshape(-1)))  # fmt: skip


def test_carry_state_needs_contiguous_batches(mini_data):
    dm = module(mini_data, tbptt=False)
    task = LanguageModelTask({**NET, "vocab_size": dm.vocab_size}, carry_state=True)
    with pytest.raises(ConfigError, match="^task.carry_state"):
        task.check_data(dm)
    task._trainer = SimpleNamespace(world_size=2)  # DDP would deal the rows out to processes
    with pytest.raises(ConfigError, match="^task.carry_state: rows that continue"):
        task.setup("fit")
    assert task.graph_blocker() and LanguageModelTask({**NET, "vocab_size": 9}).graph_blocker() is None  # fmt: skip


# -- the commands, as a user runs them ------------------------------------------------------------
TINY = [
    "data.seq_len=8",
    "data.batch_size=4",
    "data.max_train_chars=null",
    "data.max_eval_chars=600",
    "model.embedding_dim=8",
    "model.hidden_size=16",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=10",
    "callbacks.generated_samples.length=20",
]


def text_summaries(run: Path) -> dict[str, list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[str]] = {}
    for events in (run / "tensorboard").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            if tag.endswith("text_summary"):
                found.setdefault(tag, []).extend(
                    t.tensor_proto.string_val[0].decode() for t in acc.Tensors(tag)
                )
    return found


def predict(cli, run: Path, *args: str, check: bool = True):
    return cli(f"run={run}", *args, module="nnlab.predict", check=check)


def generated(result) -> dict:
    path = Path(result.stdout.strip().splitlines()[-1].removeprefix("Wrote "))
    return json.loads(path.read_text(encoding="utf-8"))


def test_char_lm_trains_logs_samples_and_generates(cli, mini_data):
    result = cli("experiment=imdb_char_lm", *TINY, env={"NNLAB_DATA_DIR": str(mini_data)})
    run, metrics = result.run_dir(), result.metrics()
    for key in ("val/loss", "val/bpc", "test/loss", "test/bpc", "test/unigram_bpc"):
        assert math.isfinite(metrics[key]), key
    assert metrics["test/bpc"] == pytest.approx(metrics["test/loss"] / math.log(2), rel=1e-5)
    assert metrics["epochs"] == 2
    assert json.loads((run / "vocab.json").read_text())["level"] == "char"
    samples = text_summaries(run)["samples/generated/text_summary"]
    assert len(samples) == 2 and all("this movie" in s for s in samples)  # one per epoch

    args = ("prompt=the movie", "length=300", "temperature=0.8", "top_k=20")
    first = generated(predict(cli, run, *args, "seed=0"))
    again = predict(cli, run, *args, "seed=0")
    other = predict_main.call([f"run={run}", *args, "seed=1"])  # in this process: quicker
    other = json.loads((other / "generated.json").read_text(encoding="utf-8"))
    assert len(first["continuation"]) == 300 and first["tokens"] == 300
    assert first["text"] == "the movie" + first["continuation"]
    assert generated(again)["text"] == first["text"]  # seeded: reproducible
    assert first["continuation"] in again.stdout
    assert other["continuation"] != first["continuation"]
    assert "\ufffd" not in first["continuation"]  # <unk> is never drawn

    predictions = sorted((run / "predictions").iterdir())
    refused = predict(cli, run, "temperature=0", check=False)
    assert refused.returncode == 2, refused.output
    assert refused.stderr.strip().splitlines()[-1].startswith("error: temperature: got 0; expected a number > 0")  # fmt: skip
    for bad, key in (("temperature=-1", "temperature"), ("top_k=0", "top_k"), ("top_k=many", "top_k"), ("length=0", "length"), ("seed=x", "seed"), ("prompt=123", "prompt")):  # fmt: skip
        with pytest.raises(UserError, match=f"^{key}: "):  # the same command, in this process
            predict_main.call([f"run={run}", bad])
    assert sorted((run / "predictions").iterdir()) == predictions  # nothing half-written


def test_word_lm_trains_and_generates_words(cli, mini_data):
    result = cli(
        "experiment=imdb_word_lm", *TINY, "data.vocab_size=40", "task.loop=lightning",
        env={"NNLAB_DATA_DIR": str(mini_data)},
    )  # fmt: skip
    run, metrics = result.run_dir(), result.metrics()
    assert metrics["test/perplexity"] == pytest.approx(math.exp(metrics["test/loss"]), rel=1e-5)
    assert 1 < metrics["test/perplexity"] < 40 and metrics["test/unigram_perplexity"] > 1
    sample = generated(predict(cli, run, "prompt=the plot", "length=12", "seed=3"))
    words = sample["continuation"].split()
    assert sample["tokens"] == 12 and len(words) <= 12 and sample["text"].startswith("the plot ")
    vocab = set(json.loads((run / "vocab.json").read_text())["tokens"])
    assert set(words) <= vocab - {"<unk>", "<eos>"}
    with pytest.raises(UserError, match="^prompt: 'zyzzyva qwerty' has no word the model's vocabulary knows"):  # fmt: skip
        predict_main.call([f"run={run}", "prompt=zyzzyva qwerty"])  # the same command, in process


def test_a_prompt_for_a_classifier_is_refused(cli, mini_data):
    result = cli(
        "experiment=imdb_mlp", "debug=limit", "trainer.max_epochs=1", "data.num_words=40",
        "data.val_size=0.25", "data.batch_size=8", env={"NNLAB_DATA_DIR": str(mini_data)},
    )  # fmt: skip
    refused = predict(cli, result.run_dir(), "prompt=hello", check=False)
    assert refused.returncode == 2 and "error: prompt:" in refused.stderr


# -- the presets on the real data ----------------------------------------------------------------
REAL = os.environ.get("NNLAB_DATA_DIR")
BOUNDS = {"imdb_char_lm": ("test/bpc", 2.3), "imdb_word_lm": ("test/perplexity", None)}


@pytest.mark.real_data
@pytest.mark.full_run
@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(BOUNDS))
def test_preset_reaches_its_bound_on_the_real_data(cli, experiment):
    if not REAL or not (Path(REAL) / "aclImdb" / "train").is_dir():
        pytest.skip("needs NNLAB_DATA_DIR with aclImdb/")
    result = cli(f"experiment={experiment}", env={"NNLAB_DATA_DIR": REAL}, timeout=1800)
    metrics = result.metrics()
    key, bound = BOUNDS[experiment]
    if bound is None:  # the word LM: well below the unigram model of the same text
        bound = metrics["test/unigram_perplexity"] / 2
    assert metrics[key] < bound, (key, metrics[key], bound)
    config = OmegaConf.load(result.run_dir() / "config.resolved.yaml")
    assert config.task.carry_state and config.data.tbptt


def test_a_run_continued_mid_epoch_carries_the_state_it_stopped_with(cli, mini_data, tmp_path):
    """A checkpoint written mid-epoch holds the state carried to the next batch: training
    continued from it ends bit for bit as the run that never stopped (with a zero state instead,
    the epoch's remaining batches train on other inputs)."""
    env = {"NNLAB_DATA_DIR": str(mini_data)}
    args = ["experiment=imdb_char_lm", *TINY, "checkpoint.every_n_train_steps=3", "logger=none"]
    reference = cli(*args, env=env)
    run = reference.run_dir()
    (mid_epoch,) = (run / "checkpoints" / "periodic").glob("*.ckpt")
    saved = torch.load(mid_epoch, map_location="cpu", weights_only=False)
    assert saved["global_step"] % 10 != 0  # 10 steps per epoch: it stopped inside one
    assert "train" in saved["carried_state"]

    continued = run_cli(*args, f"ckpt_path={mid_epoch}", outputs=tmp_path / "continued", cwd=tmp_path, env=env)  # fmt: skip
    expected = reference.metrics()
    for key in ("val/loss", "test/loss", "global_step", "epochs"):
        assert continued.metrics()[key] == expected[key], key
