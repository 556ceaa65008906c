"""benchmarks/live_memory.py: the live-tensor count, and what a MiniMax-H3 training step keeps at its peak (CPU,
widths / 56): per checkpointed block its input and its attention output, outside the blocks only block 0's input
and the rotary tables; the rest of the peak is the last block's recomputation and backward."""

import torch

from benchmarks.live_memory import LiveTensors, measure


def test_live_tensors_counts_storages_until_freed():
    mode = LiveTensors()
    with mode:
        a = torch.empty(1024)  # 4 KiB
        b = a * 2
        view = b[:10]  # no new storage
        del a
        c = torch.empty(256, dtype=torch.bfloat16)
    assert mode.peak == 8192 and mode.now == 4096 + 512
    assert sorted(n for n, *_ in mode.at_peak) == [4096, 4096]
    del b, c
    assert mode.now == 4096  # the view keeps b's storage
    del view
    assert mode.now == 0


def test_what_an_h3_step_keeps():
    r = measure("h3", 56, 2, 2, "dense", True)
    live = r["at_peak_u"]
    rope = 2 * 96 * 4 / (2 * r["hidden"])  # fp32 cos and sin [rows, 96] in hidden states (0.07 at full width)
    attention = 56 * 128 / 5376  # the saved attention output: heads x head dim wide
    assert abs(live["forward block0"] - (1 + attention)) < 0.05  # its output (block 1's input) and attention
    assert abs(live["forward block1"] - attention) < 0.05  # its output feeds norm_out: made outside
    assert live["forward outside"] - rope < 1.2  # block 0's input; no fp32 copy of the hidden states
    assert live["backward block1"] > 0.8 * r["peak_u"] - 5  # one block's recomputation and backward dominate
