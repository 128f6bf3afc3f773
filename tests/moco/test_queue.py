"""KeyQueue: wrap-around, fill count, ids/labels, snapshot of filled entries only, state_dict round trip."""

import pytest
import torch

from moco.queue import KeyQueue


def _batch(start, n, dim=4):
    ids = torch.arange(start, start + n)
    keys = ids.double().unsqueeze(1).expand(n, dim).float()
    return keys, ids


def test_fill_and_snapshot_only_filled():
    q = KeyQueue(10, 4)
    keys, ids, labels = q.snapshot()
    assert keys.shape == (0, 4) and ids.shape == (0,) and len(q) == 0
    q.enqueue(*_batch(0, 3), labels=torch.tensor([1, 2, 3]))
    keys, ids, labels = q.snapshot()
    assert len(q) == 3 and ids.tolist() == [0, 1, 2] and labels.tolist() == [1, 2, 3]
    assert torch.equal(keys[:, 0], ids.float())


def test_wrap_around_with_batch_not_dividing_k():
    q = KeyQueue(10, 4)
    for step in range(5):  # 5 x 3 = 15 keys into 10 slots
        q.enqueue(*_batch(3 * step, 3))
    keys, ids, labels = q.snapshot()
    assert len(q) == 10 and int(q.ptr) == 5
    assert sorted(ids.tolist()) == list(range(5, 15))  # the 10 most recent
    assert ids.tolist() == [10, 11, 12, 13, 14, 5, 6, 7, 8, 9]
    assert torch.equal(keys[:, 0], ids.float()) and (labels == -1).all()


def test_full_size_batch_and_too_large_batch():
    q = KeyQueue(6, 4)
    q.enqueue(*_batch(0, 4))
    q.enqueue(*_batch(100, 6))
    assert sorted(q.snapshot()[1].tolist()) == list(range(100, 106)) and int(q.ptr) == 4
    with pytest.raises(ValueError, match="queue size"):
        q.enqueue(*_batch(0, 7))


def test_state_dict_round_trip():
    q = KeyQueue(8, 4)
    q.enqueue(*_batch(0, 5), labels=torch.arange(5) % 2)
    state = q.state_dict()
    assert set(state) == {"keys", "ids", "labels", "ptr", "filled"}
    r = KeyQueue(8, 4)
    r.load_state_dict(state)
    for a, b in zip(q.snapshot(), r.snapshot()):
        assert torch.equal(a, b)
    assert int(r.ptr) == 5 and len(r) == 5


def test_invalid_arguments():
    with pytest.raises(ValueError, match="size"):
        KeyQueue(0, 4)
    q = KeyQueue(4, 4)
    with pytest.raises(ValueError, match="keys.shape"):
        q.enqueue(torch.zeros(2, 3), torch.arange(2))
    with pytest.raises(ValueError, match="ids.shape"):
        q.enqueue(torch.zeros(2, 4), torch.arange(3))
