"""The in-memory batcher (data/memory.py): every sample once per epoch, seeded orders that do not
depend on other random draws, grouped batches for the CUDA-graph step, and resume positions."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from nnlab.data.memory import GROUP_BUFFERS, GROUP_BYTES, MemoryBatcher, group_size, make_loader
from nnlab.runs import Run

N, BATCH = 50, 8  # 6 full batches and one of 2


def batcher(group: int = 1, shuffle: bool = True, seed: int = 3) -> MemoryBatcher:
    x = torch.arange(N)
    return MemoryBatcher([x, x * 10], BATCH, shuffle=shuffle, seed=seed, group=group)


def epoch(b: MemoryBatcher) -> list[torch.Tensor]:
    return [x for x, _ in b]


@pytest.mark.parametrize("group", [1, 3, 7, 10])
def test_every_sample_once_per_epoch(group):
    b = batcher(group)
    for _ in range(3):
        batches = list(b)
        seen = torch.cat([x for x, _ in batches])
        assert sorted(seen.tolist()) == list(range(N))
        assert all(torch.equal(y, x * 10) for x, y in batches)  # tensors stay aligned
        assert len(batches) == len(b) == -(-7 // group)


def test_groups_are_consecutive_batches_concatenated():
    plain, grouped = batcher(1), batcher(3)
    for _ in range(2):
        single = epoch(plain)
        expected = [torch.cat(single[i : i + 3]) for i in range(0, len(single), 3)]
        assert [g.tolist() for g in epoch(grouped)] == [e.tolist() for e in expected]


def test_groups_reuse_their_memory_once_nothing_holds_them():
    b = batcher(2)  # 4 groups an epoch, one more than GROUP_BUFFERS
    memory = []
    for _ in range(3):
        for x, y in b:  # a training loop: each group let go before the next few are drawn
            memory.append(x.data_ptr())
            assert torch.equal(y, x * 10)
    # the same GROUP_BUFFERS buffers in turn, no fresh memory per group
    assert len(set(memory)) == GROUP_BUFFERS and memory == memory[:GROUP_BUFFERS] * 4
    held = [list(b) for _ in range(2)]  # kept groups are never written over
    for groups in held:
        assert sorted(torch.cat([x for x, _ in groups]).tolist()) == list(range(N))
        assert all(torch.equal(y, x * 10) for x, y in groups)
    assert (
        torch.cat([x for x, _ in held[0]]).tolist() != torch.cat([x for x, _ in held[1]]).tolist()
    )


def test_orders_are_seeded_per_epoch_and_ignore_the_global_generator():
    a, b = batcher(), batcher()
    first = epoch(a)
    torch.manual_seed(123)
    torch.rand(1000)  # other random draws must not move the order
    assert [x.tolist() for x in epoch(b)] == [x.tolist() for x in first]
    assert epoch(a)[0].tolist() != first[0].tolist()  # the next epoch: another order
    assert epoch(batcher(seed=4))[0].tolist() != first[0].tolist()
    assert torch.cat(epoch(batcher(shuffle=False))).tolist() == list(range(N))


@pytest.mark.parametrize("saved_group, resumed_group", [(1, 1), (3, 3), (3, 1), (1, 2)])
def test_a_resumed_epoch_continues_with_the_same_samples(saved_group, resumed_group):
    reference = torch.cat(epoch(batcher())).tolist()
    b = batcher(saved_group)
    it = iter(b)
    consumed = [next(it)[0] for _ in range(2)]
    state = b.state_dict()
    assert state == {"epoch": 0, "position": min(2 * saved_group, 7)}
    resumed = batcher(resumed_group)
    resumed.load_state_dict(state)
    rest = epoch(resumed)
    assert torch.cat(consumed + rest).tolist() == reference
    assert torch.cat(epoch(resumed)).tolist() != reference  # then the next epoch as usual


def test_make_loader_groups_as_many_batches_as_it_is_told():
    class Strategy:
        root_device = torch.device("cpu")

    class Trainer:
        strategy = Strategy()
        global_rank, world_size, current_epoch = 0, 1, 0

    class Data:
        trainer = Trainer()

    x = torch.arange(N)
    train = make_loader(Data(), [x], BATCH, shuffle=True, micro_batches=4)
    val = make_loader(Data(), [x], BATCH, shuffle=False)
    assert isinstance(train, MemoryBatcher) and train.group == 4 and len(train) == 2
    assert val.group == 1 and len(val) == 7
    loader = make_loader(Data(), [x], BATCH, True, in_memory=False, micro_batches=4)
    assert isinstance(loader, DataLoader) and [len(b[0]) for b in loader] == [32, 18]


def test_the_fused_loop_tells_the_data_module_how_many_batches_to_group(make_cfg, monkeypatch):
    """The training loader of a real data module, built while nnlab-train fits: grouped as the
    fused loop says (sine: 22 batches of 32 -> 3 batches of up to 8 x 32), evaluation not."""
    from lightning.pytorch import Callback
    from omegaconf import open_dict

    import nnlab.train as entry

    seen = {}

    class Spy(Callback):
        def on_train_start(self, trainer, pl_module):
            seen["train"] = [len(b[0]) for b in trainer.train_dataloader]
            seen["micro_batches"] = trainer.datamodule.micro_batches

        def on_test_start(self, trainer, pl_module):
            seen["test_group"] = trainer.test_dataloaders.group

    cfg = make_cfg("experiment=sine_mlp", "trainer.max_epochs=1", "task.micro_batches=8")
    with open_dict(cfg):
        del cfg["hydra"]
    entry.train(cfg, Run(cfg.paths.output_dir), extra_callbacks=[Spy()])
    assert seen["micro_batches"] == 8 and seen["train"] == [256, 256, 184]
    assert seen["test_group"] == 1


def test_groups_stay_small():
    rows = torch.zeros(100, 10000, dtype=torch.bool)  # 10 kB per sample, 5 MB per batch of 512
    assert group_size([rows, torch.zeros(100)], 512, 32) == 9  # 46 MB <= GROUP_BYTES
    assert group_size([torch.zeros(100, 28, 28)], 8, 32) == 32  # 25 kB batches: as asked
    assert group_size([torch.zeros(100, 10**7, dtype=torch.bool)], 4, 8) == 1
    assert GROUP_BUFFERS * GROUP_BYTES <= 160 * 2**20  # the buffers held for a whole run
