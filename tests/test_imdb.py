"""IMDB data: a generated miniature aclImdb tree (and tarball, served from a file:// URL) through
the real download / verify / extract / tokenize / cache path; the views; the experiments end to
end; the real data when NNLAB_DATA_DIR has it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile
from pathlib import Path

import pytest
import torch

from nnlab.data import imdb
from nnlab.data.imdb import IMDBDataModule, pad_sequences, tokenize
from nnlab.errors import ConfigError, DataError
from nnlab.schema import check_args

POSITIVE = ["great", "wonderful", "loved", "superb", "brilliant"]
NEGATIVE = ["awful", "boring", "hated", "terrible", "dull"]
FILLER = ["the", "movie", "film", "plot", "actor", "scene", "story", "was", "it", "and"]


def review(rng: random.Random, label: int, words: int) -> str:
    cue = POSITIVE if label else NEGATIVE
    tokens = [rng.choice(cue if rng.random() < 0.3 else FILLER) for _ in range(words)]
    half = len(tokens) // 2
    return " ".join(tokens[:half]).capitalize() + ".<br /><br />" + " ".join(tokens[half:]) + "!"


def write_tree(root: Path, per_folder: int = 12, seed: int = 0) -> Path:
    """aclImdb/{train,test}/{neg,pos}/<id>_<rating>.txt with learnable word cues."""
    rng = random.Random(seed)
    for split in ("train", "test"):
        for label, name in enumerate(("neg", "pos")):
            folder = root / "aclImdb" / split / name
            folder.mkdir(parents=True)
            for i in range(per_folder):
                rating = rng.randint(7, 10) if label else rng.randint(1, 4)
                text = review(rng, label, rng.randint(5, 40))
                if split == "test" and i == 0:
                    text += " zyzzyva"  # a word only the test split has: out of vocabulary
                (folder / f"{i}_{rating}.txt").write_text(text, encoding="utf-8")
    return root / "aclImdb"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def mini_data(tmp_path) -> Path:
    """A data directory holding a generated aclImdb/ folder."""
    data_dir = tmp_path / "data"
    write_tree(data_dir)
    return data_dir


@pytest.fixture
def mini_tarball(tmp_path) -> tuple[str, str]:
    """(file:// URL, sha256) of a miniature aclImdb_v1.tar.gz."""
    src = tmp_path / "src"
    write_tree(src)
    archive = tmp_path / "server" / "aclImdb_v1.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "aclImdb", arcname="aclImdb")
    return archive.as_uri(), sha256(archive)


def module(data_dir: Path, **kwargs) -> IMDBDataModule:
    settings = {"num_words": 30, "max_len": 16, "val_size": 0.25, "batch_size": 8, "seed": 1}
    settings.update(kwargs)
    return IMDBDataModule(data_dir=str(data_dir), download=False, **settings)


# -- download, verify, extract -----------------------------------------------------------------
def test_download_verify_extract_from_a_file_url(tmp_path, mini_tarball):
    url, digest = mini_tarball
    data_dir = tmp_path / "fresh"
    dm = IMDBDataModule(
        data_dir=str(data_dir), url=url, sha256=digest, num_words=30, max_len=16, val_size=0.25
    )
    dm.setup()
    assert (data_dir / "aclImdb_v1.tar.gz").is_file()
    assert sorted(p.name for p in (data_dir / "aclImdb" / "train").iterdir()) == ["neg", "pos"]
    assert not list(data_dir.glob(".aclImdb-partial-*")) and not list(data_dir.glob("*.part"))
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 24
    assert len(dm.datasets["test"]) == 24
    # The archive now in data_dir is used (verified) when the folder goes away: no download.
    import shutil

    shutil.rmtree(data_dir / "aclImdb")
    again = IMDBDataModule(data_dir=str(data_dir), url="file:///nonexistent.tar.gz", sha256=digest)
    assert again.load()["train"]["labels"].tolist() == dm.load()["train"]["labels"].tolist()


def test_checksum_mismatch_leaves_nothing_behind(tmp_path, mini_tarball):
    url, _ = mini_tarball
    data_dir = tmp_path / "fresh"
    dm = IMDBDataModule(data_dir=str(data_dir), url=url, sha256="0" * 64)
    with pytest.raises(DataError, match="sha256") as err:
        dm.setup()
    assert url in str(err.value) and "expected" in str(err.value)
    assert not (data_dir / "aclImdb").exists()
    assert not (data_dir / "aclImdb_v1.tar.gz").exists()
    assert not list(data_dir.glob("*.part"))


def test_a_corrupt_archive_in_data_dir_is_reported(tmp_path, mini_tarball):
    _, digest = mini_tarball
    data_dir = tmp_path / "fresh"
    data_dir.mkdir()
    (data_dir / "aclImdb_v1.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="does not match the published"):
        IMDBDataModule(data_dir=str(data_dir), sha256=digest).setup()
    with pytest.raises(DataError, match="not a readable tar.gz"):
        IMDBDataModule(data_dir=str(data_dir), sha256=None).setup()
    assert not (data_dir / "aclImdb").exists()
    assert not list(data_dir.glob(".aclImdb-partial-*"))


def test_a_failed_download_is_reported(tmp_path):
    data_dir = tmp_path / "fresh"
    with pytest.raises(DataError, match="could not download"):
        IMDBDataModule(data_dir=str(data_dir), url=(tmp_path / "absent.tar.gz").as_uri()).setup()
    assert not (data_dir / "aclImdb").exists() and not list(data_dir.glob("*.part"))


def test_unsafe_archive_members_are_refused(tmp_path):
    data_dir = tmp_path / "fresh"
    data_dir.mkdir()
    with tarfile.open(data_dir / "aclImdb_v1.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(DataError, match="unexpected path"):
        IMDBDataModule(data_dir=str(data_dir), sha256=None).setup()
    assert not (tmp_path / "escaped.txt").exists() and not (data_dir / "aclImdb").exists()


def test_an_incomplete_tree_is_reported(mini_data):
    import shutil

    shutil.rmtree(mini_data / "aclImdb" / "test" / "pos")
    with pytest.raises(DataError, match=r"aclImdb/test/pos is missing"):
        module(mini_data).setup()


def test_no_data_and_no_download(tmp_path):
    with pytest.raises(DataError, match="data.download=true"):
        module(tmp_path / "empty").setup()


# -- tokenizer, vocabulary, views --------------------------------------------------------------
def test_tokenizer():
    assert tokenize("I <br /><br />LOVED it, didn't I? 10/10 Café") == [
        "i", "loved", "it", "didn't", "i", "10", "10", "café",
    ]  # fmt: skip


def test_vocabulary_comes_from_the_training_split(mini_data):
    dm = module(mini_data, num_words=100)
    dm.setup()
    assert dm.vocab[:2] == ["<pad>", "<oov>"]
    assert "zyzzyva" not in dm.vocab  # only in the test split
    assert len(dm.vocab) == 2 + len(set(POSITIVE + NEGATIVE + FILLER))
    assert dm.vocab[2] in FILLER  # filler words are the most frequent
    small = module(mini_data, num_words=5)
    small.setup()
    assert small.vocab == dm.vocab[:5]
    rare = module(mini_data, num_words=100, min_freq=10_000)
    rare.setup()
    assert rare.vocab == ["<pad>", "<oov>"]
    test = rare.load()["test"]
    assert set(test["flat"].tolist()) == {imdb.OOV}


def test_multihot_view(mini_data):
    dm = module(mini_data, view="multihot")
    dm.setup()
    x, y = dm.batch_transform(next(iter(dm.train_dataloader())))
    assert x.shape == (8, 30) and x.dtype == torch.float32
    assert set(x.unique().tolist()) <= {0.0, 1.0} and (x[:, 0] == 0).all()  # pad never set
    assert set(y.tolist()) <= {0, 1}
    # Item i is exactly the set of its review's ids.
    text = dm.review_text("train", 0)
    ids = {dm.vocab.index(w) if w in dm.vocab else imdb.OOV for w in tokenize(text)}
    vec, _ = dm.datasets["train"][0]
    assert set(vec.nonzero().flatten().tolist()) == ids


def test_sequence_view_pads_and_truncates(mini_data):
    dm = module(mini_data, view="sequence", max_len=16)
    dm.setup()
    x, lengths, y = next(iter(dm.test_dataloader()))
    assert x.shape == (8, 16) and x.dtype == torch.long and lengths.shape == y.shape == (8,)
    for row, n in zip(x, lengths, strict=True):
        assert (row[n:] == imdb.PAD).all() and (row[:n] != imdb.PAD).all()
    text = dm.review_text("test", 0)
    index = {w: i for i, w in enumerate(dm.vocab)}
    words = [index.get(w, imdb.OOV) for w in tokenize(text)]
    ids, n, _ = dm.datasets["test"][0]
    assert n == min(len(words), 16)
    assert ids[:n].tolist() == words[-16:]  # truncating "pre" keeps the end


def test_pad_sequences_truncating():
    flat = torch.tensor([5, 6, 7, 8, 9, 3], dtype=torch.int32)
    offsets = torch.tensor([0, 5, 5, 6])  # lengths 5, 0, 1
    ids, lengths = pad_sequences(flat, offsets, 3, "pre")
    assert ids.tolist() == [[7, 8, 9], [0, 0, 0], [3, 0, 0]] and lengths.tolist() == [3, 1, 1]
    ids, _ = pad_sequences(flat, offsets, 3, "post")
    assert ids[0].tolist() == [5, 6, 7]


def test_validation_split_is_seeded_and_disjoint(mini_data):
    a, b, c = module(mini_data, seed=1), module(mini_data, seed=1), module(mini_data, seed=2)
    for dm in (a, b, c):
        dm.setup()
    assert a.indices["val"].tolist() == b.indices["val"].tolist()
    assert a.indices["val"].tolist() != c.indices["val"].tolist()
    assert len(a.indices["val"]) == 6 and len(a.indices["train"]) == 18
    assert not set(a.indices["val"].tolist()) & set(a.indices["train"].tolist())
    with pytest.raises(ConfigError, match="data.val_size"):
        module(mini_data, val_size=24).setup()


def test_example_input_matches_the_view(mini_data):
    assert module(mini_data, view="multihot").example_input(3).shape == (3, 30)
    ids, lengths = module(mini_data, view="sequence").example_input(3)
    assert ids.shape == (3, 16) and lengths.tolist() == [16, 16, 16]


def test_bad_settings_name_their_key(mini_data):
    for key, value in (("view", "bag"), ("truncating", "middle"), ("num_words", 2)):
        with pytest.raises(ConfigError, match=f"data.{key}"):  # the schema (nnlab.schema)
            check_args(IMDBDataModule, "data", data_dir=str(mini_data), **{key: value})


def test_vocabulary_is_saved_for_later(mini_data, tmp_path):
    dm = module(mini_data)
    dm.setup()
    saved = json.loads(dm.save_vocab(tmp_path / "run" / "vocab.json").read_text())
    assert saved["words"] == dm.vocab and saved["pad_id"] == 0 and saved["oov_id"] == 1
    assert saved["max_len"] == 16 and saved["tokenizer_version"] == imdb.TOKENIZER_VERSION


# -- the cache ---------------------------------------------------------------------------------
@pytest.fixture
def tokenized(monkeypatch):
    """How many times the reviews were tokenized (instead of loaded from the cache)."""
    calls = []
    preprocess = IMDBDataModule.preprocess

    def counted(self, root):
        calls.append(root)
        return preprocess(self, root)

    monkeypatch.setattr(IMDBDataModule, "preprocess", counted)
    return calls


def test_second_load_comes_from_the_cache(mini_data, monkeypatch, tokenized):
    first = module(mini_data, view="sequence")
    first.setup()
    assert len(tokenized) == 1 and first.cache_path.is_file()
    assert first.cache_path.parent == mini_data / "cache"

    def no_tokenizing(self, root):
        raise AssertionError("tokenized again instead of using the cache")

    monkeypatch.setattr(IMDBDataModule, "preprocess", no_tokenizing)
    second = module(mini_data, view="multihot")  # the view does not change the cache
    second.setup()
    assert second.cache_path == first.cache_path
    assert second.vocab == first.vocab
    assert torch.equal(second.load()["test"]["ids"], first.load()["test"]["ids"])


def test_cache_key_follows_what_changes_the_data(mini_data, tokenized):
    def path(**kwargs) -> Path:
        dm = module(mini_data, **kwargs)
        dm.load()
        return dm.cache_path

    base = path()
    assert path() == base
    assert path(num_words=20) != base
    assert path(max_len=8) != base
    assert path(min_freq=2) != base
    assert path(truncating="post") != base
    assert path(seed=7, val_size=0.5, batch_size=3) == base  # these act after the cache
    review = next((mini_data / "aclImdb" / "train" / "pos").iterdir())
    review.write_text(review.read_text() + " changed", encoding="utf-8")
    assert path() != base
    before = len(tokenized)
    module(mini_data, cache=False).load()
    assert len(tokenized) == before + 1


def test_version_change_invalidates_the_cache(mini_data, monkeypatch, tokenized):
    dm = module(mini_data)
    dm.load()
    monkeypatch.setattr(imdb, "TOKENIZER_VERSION", imdb.TOKENIZER_VERSION + 1)
    again = module(mini_data)
    again.load()
    assert again.cache_path != dm.cache_path and len(tokenized) == 2


def test_an_unreadable_cache_is_rebuilt(mini_data, tokenized):
    dm = module(mini_data)
    dm.load()
    dm.cache_path.write_bytes(b"garbage")
    again = module(mini_data)
    again.load()
    assert len(tokenized) == 2 and again.vocab == dm.vocab


# -- the experiments, end to end ---------------------------------------------------------------
IMDB_EXPERIMENTS = ["imdb_mlp", "imdb_lstm", "imdb_gru", "imdb_cnn"]
TINY = [
    "debug=limit",
    "trainer.max_epochs=1",
    "data.num_words=40",
    "data.max_len=24",
    "data.val_size=0.25",
    "data.batch_size=8",
]


@pytest.mark.parametrize("experiment", IMDB_EXPERIMENTS)
def test_each_imdb_experiment_trains_briefly(cli, mini_data, experiment):
    result = cli(f"experiment={experiment}", *TINY, env={"NNLAB_DATA_DIR": str(mini_data)})
    run = result.run_dir()
    metrics = result.metrics()
    for key in ("val/acc", "val/f1", "val/auroc", "test/acc", "test/f1", "test/auroc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    vocab = json.loads((run / "vocab.json").read_text())
    assert len(vocab["words"]) == 2 + len(set(POSITIVE + NEGATIVE + FILLER))
    samples = json.loads((run / "test_reviews.json").read_text())
    assert len(samples) == 8 and {s["label"] for s in samples} == {"neg", "pos"}
    assert all(0.0 <= s["p_positive"] <= 1.0 and s["text"] for s in samples)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert list((mini_data / "cache").glob("imdb-*.pt"))


def test_the_cli_downloads_from_a_file_url(cli, tmp_path, mini_tarball):
    url, digest = mini_tarball
    data_dir = tmp_path / "downloaded"
    cli(
        "experiment=imdb_mlp",
        *TINY,
        f"data.url={url}",
        f"data.sha256={digest}",
        env={"NNLAB_DATA_DIR": str(data_dir)},
    )
    assert (data_dir / "aclImdb" / "test" / "pos").is_dir()


def test_the_cli_reports_bad_data_in_one_line(cli, tmp_path, mini_tarball):
    url, _ = mini_tarball
    result = cli(
        "experiment=imdb_mlp",
        *TINY,
        f"data.url={url}",
        "data.sha256=" + "ab" * 32,  # (all digits would be a number: a string is expected)
        env={"NNLAB_DATA_DIR": str(tmp_path / "downloaded")},
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: data.sha256: the download")
    assert json.loads((result.run_dir() / "status.json").read_text())["status"] == "failed"


# -- real data ---------------------------------------------------------------------------------
REAL = os.environ.get("NNLAB_DATA_DIR")


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.skipif(
    not REAL or not (Path(REAL) / "aclImdb").is_dir(),
    reason="needs NNLAB_DATA_DIR with aclImdb/ (the real IMDB reviews)",
)
def test_imdb_mlp_reaches_86_percent_in_two_epochs(cli):
    metrics = cli("experiment=imdb_mlp", "trainer.max_epochs=2", timeout=1200).metrics()
    assert metrics["test/acc"] >= 0.86, metrics


def test_the_fused_loop_casts_one_micro_batch_at_a_time(make_cfg, mini_data, monkeypatch):
    """imdb_mlp's bool multi-hot rows become floats per micro-batch (one batch's floats at a
    time, not a whole group's: the same casts as in Lightning's loop), and the fused loop still
    trains exactly like Lightning's."""
    from omegaconf import open_dict

    from nnlab.runs import Run
    from nnlab.train import train

    monkeypatch.setenv("NNLAB_DATA_DIR", str(mini_data))
    rows: list[tuple[bool, int]] = []
    transform = IMDBDataModule.batch_transform

    def recording(self, batch):
        rows.append((self.trainer is not None and self.trainer.training, batch[0].shape))
        return transform(self, batch)

    monkeypatch.setattr(IMDBDataModule, "batch_transform", recording)
    results, casts = {}, {}
    for loop in ("lightning", "fused"):
        rows.clear()
        tiny = [o for o in TINY if not o.startswith("debug=")]  # batch limits: no groups
        cfg = make_cfg("experiment=imdb_mlp", *tiny, "trainer.max_epochs=2", f"task.loop={loop}")
        with open_dict(cfg):
            cfg.paths.output_dir = str(mini_data.parent / loop)
            del cfg["hydra"]
        results[loop] = train(cfg, Run(cfg.paths.output_dir))
        casts[loop] = [shape for in_training, shape in rows if in_training]
    # batches of data.batch_size=8 rows, and the graph's example input (TensorBoard)
    assert casts["fused"] == casts["lightning"]
    assert [s[0] for s in casts["fused"]].count(8) >= 4
    for key in ("test/acc", "test/loss", "val/loss"):
        assert results["fused"][key] == pytest.approx(results["lightning"][key], rel=1e-4)
