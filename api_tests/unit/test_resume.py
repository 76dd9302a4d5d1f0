"""A training run stopped after any epoch and resumed from its checkpoint ends with exactly the
weights of an uninterrupted run (same seed): the checkpoint holds the whole training state."""

from __future__ import annotations

import io

import pytest
import torch

from kdserve.models.zoo import create_student
from kdserve.service.schemas import TrainingSpec
from kdserve.worker import trainer
from kdserve.worker.data import Split
from kdserve.worker.losses import build_loss


def data(n=200, d=12, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    t = torch.randn(n, c, generator=g) * 3
    y = t.argmax(1)
    y[::3] = -1  # some unlabelled rows
    return Split(x, y, t, x[:, :6].clone())


def checkpoint_after(n: int, student, loss_fn, train_split: Split, val_split: Split, spec: TrainingSpec,
                     **kw) -> dict:
    """Train until the n-th checkpoint is written, stop there (as a cancel would), and return that
    checkpoint as a resumed run reads it (through torch.save/load)."""
    saved = []

    def keep(state):
        buf = io.BytesIO()
        torch.save(state, buf)
        saved.append(buf.getvalue())

    with pytest.raises(trainer.Stopped):
        trainer.train(student, loss_fn, train_split, val_split, spec, torch.device("cpu"), checkpoint=keep,
                      should_stop=lambda: "cancelled" if len(saved) >= n else None, **kw)
    return torch.load(io.BytesIO(saved[-1]), weights_only=True)


@pytest.mark.parametrize("method", ["kd", "dhkd", "pskd", "fitnet"])
def test_resume_is_exact(method):
    spec = TrainingSpec(epochs=4, batch_size=32, learning_rate=0.01, seed=3)
    train_split, val_split = data(), data(40, seed=1)
    params = {}

    def fresh():
        torch.manual_seed(0)
        return create_student("mlp", {"hidden_sizes": [16], "batch_norm": True}, [12], 4), build_loss(method, params)

    s_full, l_full = fresh()
    full = trainer.train(s_full, l_full, train_split, val_split, spec, torch.device("cpu"))

    s_a, l_a = fresh()
    state = checkpoint_after(2, s_a, l_a, train_split, val_split, spec)
    assert state["epoch"] == 2
    s_b, l_b = fresh()
    resumed = trainer.train(s_b, l_b, train_split, val_split, spec, torch.device("cpu"), resume=state)
    for a, b in zip(s_full.state_dict().values(), s_b.state_dict().values()):
        assert torch.equal(a, b)
    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in full.history]


def test_text_batches_are_sortish_and_tabular_batches_unchanged():
    n, batch = 5000, 32
    lengths = torch.randint(3, 120, (n,), generator=torch.Generator().manual_seed(1))
    # tabular: the plain shuffle, cut in order (what training always did)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    plain = trainer.epoch_batches(n, None, batch, g1)
    assert torch.equal(torch.cat(plain), torch.randperm(n, generator=g2))

    def padded_share(batches):  # token positions that are padding once each batch is cut to its longest row
        cells = sum(len(b) * int(lengths[b].max()) for b in batches)
        return 1 - int(lengths.sum()) / cells

    g = torch.Generator().manual_seed(7)
    first, second = (trainer.epoch_batches(n, lengths, batch, g) for _ in range(2))
    for batches in (first, second):
        assert sorted(torch.cat(batches).tolist()) == list(range(n))  # every row once
        assert len(batches) == len(plain) and sorted(map(len, batches)) == sorted(map(len, plain))
        assert padded_share(batches) < 0.1 < 0.4 < padded_share(plain)
    assert [b.tolist() for b in first] != [b.tolist() for b in second]  # still random from epoch to epoch
    # same generator state, same batches: a resumed run draws what the uninterrupted one drew
    again = trainer.epoch_batches(n, lengths, batch, torch.Generator().manual_seed(7))
    assert all(torch.equal(a, b) for a, b in zip(again, first))
    # too few rows for 8 pools of 2 batches: plain batches, as for tabular data
    small = trainer.epoch_batches(500, lengths[:500], batch, torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat(small), torch.randperm(500, generator=torch.Generator().manual_seed(3)))
