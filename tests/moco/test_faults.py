"""moco.faults: the fault-injection setting and its once-only marker."""

import pytest

from moco.faults import maybe_inject_fault, parse_fault


def test_parse_fault():
    assert parse_fault("epoch=2,kind=exit") == {"epoch": 2, "kind": "exit", "rank": 0}
    assert parse_fault("epoch=3,rank=1") == {"epoch": 3, "kind": "raise", "rank": 1}
    assert parse_fault("") is None and parse_fault(None) is None
    with pytest.raises(ValueError, match="MOCO_FAULT"):
        parse_fault("kind=explode")


def test_fault_fires_once_at_its_epoch_and_rank(tmp_path):
    fault = parse_fault("epoch=2,kind=raise")
    maybe_inject_fault(fault, epoch=1, rank=0, run_dir=str(tmp_path))  # not yet
    maybe_inject_fault(fault, epoch=2, rank=1, run_dir=str(tmp_path))  # another rank
    with pytest.raises(RuntimeError, match="injected fault at epoch 2"):
        maybe_inject_fault(fault, epoch=2, rank=0, run_dir=str(tmp_path))
    maybe_inject_fault(fault, epoch=2, rank=0, run_dir=str(tmp_path))  # the resumed run goes on
