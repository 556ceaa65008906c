"""Search for layouts that tell a surviving mask mutant apart (tests/MUTATION.md, mask group).

    python tests/mutation_search.py RECORD.json [--layouts 3000] [--seed 1]

For every mutant of `radial/mask/build.py` that a mutation record left alive and whose diff is one line, the line is
applied to a copy of the module and its block mask compared with ours over random layouts (frames, tokens per frame,
block size, decay, sink, adjacent decay, text tokens, family). Prints the first layout where they differ (a test
layout to add, once the token-level brute force in tests/test_mask_parity.py agrees with ours there) or that none
of them differ (evidence for an equivalence; the argument goes in the record).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import radial.mask.build as build  # noqa: E402
from radial.mask.options import MaskOptions  # noqa: E402

SOURCE = Path(build.__file__).read_text()


def mutated(minus: str, plus: str) -> types.ModuleType | None:
    """`radial.mask.build` with one line replaced, or None where the line is not unique in the file."""
    if SOURCE.count(minus) != 1:
        return None
    module = types.ModuleType("radial_mask_build_mutant")
    exec(compile(SOURCE.replace(minus, plus), "radial_mask_build_mutant", "exec"), module.__dict__)
    return module


def layouts(n: int, seed: int) -> Iterator[dict]:
    """Random layouts, wider than the brute-force test's (which must stay fast)."""
    rng = random.Random(seed)
    for _ in range(n):
        block = rng.choice([16, 32, 48, 64, 128])
        tpf = rng.choice(
            [rng.randint(1, 64), rng.randint(65, 600), 3 * block + rng.randint(-3, 3), block * rng.randint(1, 5)]
        )
        yield dict(frames=rng.randint(1, 40), tpf=tpf, block=block, decay=rng.choice([1.0, 0.5, 0.25, 0.7, 1.3, 2.0, 0.1]),
                   sink=rng.random() < 0.5, decay_adjacent=rng.random() < 0.3,
                   text=rng.choice([0, 0, rng.randint(1, 300)]), model=rng.choice(["wan", "hunyuan"]))  # fmt: skip


def mask_of(module: types.ModuleType, c: dict) -> np.ndarray:
    opts = MaskOptions.create(
        block_size=c["block"],
        decay_factor=c["decay"],
        model=c["model"],
        sink=c["sink"],
        decay_adjacent=c["decay_adjacent"],
    )
    return module.radial_block_mask_numpy(c["frames"], c["tpf"], opts, c["text"])


def first_difference(module: types.ModuleType, n: int, seed: int) -> dict | None:
    """The first random layout where the mutant's mask differs from ours (or raises), else None."""
    for c in layouts(n, seed):
        want = mask_of(build, c)
        try:
            got = mask_of(module, c)
        except Exception:
            return c
        if got.shape != want.shape or not np.array_equal(got, want):
            return c
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("record", type=Path)
    p.add_argument("--layouts", type=int, default=3000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    alive = json.loads(args.record.read_text())["not_killed"]
    for name, info in alive.items():
        if not name.startswith("radial.mask.build."):
            continue
        minus = [line[1:] for line in info["diff"] if line.startswith("-")]
        plus = [line[1:] for line in info["diff"] if line.startswith("+")]
        module = mutated(minus[0], plus[0]) if len(minus) == len(plus) == 1 else None
        if module is None:
            print(f"{name}: not one unique line; apply it by hand")
            continue
        found = first_difference(module, args.layouts, args.seed)
        print(f"{name}: " + (f"differs at {json.dumps(found)}" if found else f"same mask on {args.layouts} layouts"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
