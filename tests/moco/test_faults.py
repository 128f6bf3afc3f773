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


def test_start_fault_fails_every_start_and_no_epoch(tmp_path):
    from moco.faults import StartupFault, maybe_fail_start

    fault = parse_fault("kind=start")
    assert fault == {"kind": "start"}
    for _ in range(2):  # every attempt: no marker
        with pytest.raises(StartupFault, match="failed to start"):
            maybe_fail_start(fault)
    maybe_inject_fault(fault, epoch=1, rank=0, run_dir=str(tmp_path))  # the epoch switch ignores it
    maybe_fail_start(parse_fault("epoch=2,kind=raise"))  # an epoch fault does not fail the start
    maybe_fail_start(None)
