"""tests/mutation.py's time limit: a mutmut run past `--minutes` is stopped (its whole process group, as Ctrl-C
would), so a long group ends with what it checked instead of running past a session."""

from __future__ import annotations

import os
import sys
import time

import pytest

from tests.mutation import main, run_mutmut


def test_a_run_past_its_limit_is_stopped_with_its_children(tmp_path):
    marker = tmp_path / "child.pid"
    # a parent that starts a child and both sleep: the stop must reach the child too (mutmut's forked workers)
    script = (
        "import subprocess, sys, time; "
        f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); open({str(marker)!r}, 'w').write(str(c.pid)); "
        "time.sleep(60)"
    )
    t0 = time.perf_counter()
    run_mutmut([sys.executable, "-c", script], tmp_path, dict(os.environ), minutes=0.03)
    assert time.perf_counter() - t0 < 30
    child = int(marker.read_text())
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # gone (or a zombie of a dead parent, reaped by init)
        for _ in range(20):
            os.kill(child, 0)
            time.sleep(0.25)


def test_minutes_must_be_positive():
    with pytest.raises(SystemExit):
        main(["step", "--minutes", "0"])


def test_rerun_and_mutants_are_one_or_the_other(tmp_path):
    record = tmp_path / "r.json"
    record.write_text('{"not_killed": {}}')
    with pytest.raises(SystemExit):
        main(["mask", "--rerun", str(record), "--mutants", "radial.mask.build.*"])
    with pytest.raises(SystemExit):
        main(["all", "--mutants", "radial.mask.build.*"])


def test_search_tells_a_mask_mutant_apart_where_the_oracle_agrees_with_us():
    """tests/mutation_search.py: a line that drops the last row of the last row block is found on a random layout
    where the token-level brute force agrees with our mask; an unchanged line is found nowhere."""
    import numpy as np

    from radial.mask import build
    from tests.mutation_search import first_difference, mask_of, mutated
    from tests.test_mask_parity import token_level_mask

    line = "(rem_r + tpf - 1)[:, None]), span - 1)"
    assert first_difference(mutated(line, line), 30, 1) is None
    mutant = mutated(line, line.replace("span - 1", "span - 2"))
    c = first_difference(mutant, 300, 1)
    assert c is not None
    truth = token_level_mask(c["frames"], c["tpf"], c["block"], c["decay"], c["sink"], c["decay_adjacent"], c["text"])
    assert np.array_equal(mask_of(build, c), truth.numpy())
    assert not np.array_equal(mask_of(mutant, c), truth.numpy())
