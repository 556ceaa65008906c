"""The training loop's policies (train/policies.py), each on its own: NaN, early stop, stop signal."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from train.policies import EarlyStop, NanPolicy, NonFiniteLoss, StopSignal


def test_nan_policy_skips_up_to_the_limit_then_stops():
    nan = NanPolicy("skip", max_skips=2)
    assert nan.after_step(0, bad=False) is None
    assert "step 1: non-finite loss; step skipped (1 in a row" in nan.after_step(1, bad=True)
    assert "(2 in a row" in nan.after_step(2, bad=True)
    with pytest.raises(NonFiniteLoss, match=r"step 3: .*train.on_nan=skip, 3 in a row"):
        nan.after_step(3, bad=True)


def test_nan_policy_streak_resets_and_stop_stops_at_once():
    nan = NanPolicy("skip", max_skips=1)
    nan.after_step(0, bad=True)
    nan.after_step(1, bad=False)
    assert nan.streak == 0 and "(1 in a row" in nan.after_step(2, bad=True)
    with pytest.raises(NonFiniteLoss, match="train.on_nan=stop, 1 in a row"):
        NanPolicy("stop", max_skips=5).after_step(7, bad=True)


def test_early_stop_on_a_plateau():
    early = EarlyStop(patience=2, min_delta=0.1)
    assert early.check({"val/loss": 1.0}, 0.0) is None  # the first is a gain over infinity
    assert early.check(None, 0.0) is None and early.check({"other": 1.0}, 0.0) is None  # no validation: no count
    assert early.check({"val/loss": 0.95}, 0.0) is None  # under a 10% gain: stale 1, best 0.95
    assert early.check({"val/loss": 0.8}, 0.0) is None  # a gain: stale 0
    assert early.check({"val/loss": 0.79}, 0.0) is None
    reason = early.check({"val/loss": 0.9}, 0.0)
    assert reason == "held-out loss plateaued (2 validations without a 10.0% gain on 0.7900)"


def test_early_stop_on_the_time_limit_and_off_by_default():
    assert EarlyStop().check({"val/loss": 5.0}, 1e9) is None
    early = EarlyStop(time_limit_s=60)
    assert early.check(None, 59.9) is None
    assert early.check(None, 60.0) == "train.time_limit_s=60 reached"


def test_early_stop_is_decided_alike_on_every_rank():
    """Another rank's reason ends this rank's run too; a reason no rank agrees on does not."""
    other_rank = EarlyStop(time_limit_s=60)
    assert other_rank.check(None, 1.0, agree=lambda mine: True) == "another rank ended the run early"
    assert other_rank.check(None, 61.0, agree=lambda mine: False) is None


def test_stop_signal_names_the_signal_and_ctrl_c_interrupts():
    flag = SimpleNamespace(requested=False, signal_name=None)
    stop = StopSignal(flag)
    assert not stop.check() and stop.stopped_by is None
    flag.requested, flag.signal_name = True, "SIGTERM"
    assert stop.check() and stop.stopped_by == "SIGTERM" and not stop.interrupted
    flag.signal_name = "SIGINT"
    assert stop.check() and stop.interrupted


def test_stop_signal_on_another_rank():
    flag = SimpleNamespace(requested=False, signal_name=None)
    stop = StopSignal(flag)
    assert stop.check(agree=lambda mine: True)  # a signal elsewhere
    assert stop.stopped_by == "a signal on another rank" and stop.interrupted  # agree() said SIGINT somewhere
