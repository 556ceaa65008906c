"""Every JSON a device call's benchmarks wrote, in one file: the raw numbers come back even when the call returns
only a few of its files (Run 3 of train_step.md lost its JSON that way and had to be copied from the log).

    python benchmarks/bundle_results.py OUT      # writes OUT/results_bundle.json: {"files": {relative path: JSON}}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BUNDLE = "results_bundle.json"


def bundle(out: Path) -> Path:
    """Collect out/**/*.json (not an earlier bundle) into out/results_bundle.json; unreadable files are listed with
    their error instead of their content."""
    files, unreadable = {}, {}
    for path in sorted(out.rglob("*.json")):
        if path.name == BUNDLE:
            continue
        rel = str(path.relative_to(out))
        try:
            files[rel] = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            unreadable[rel] = f"{type(err).__name__}: {err}"
    target = out / BUNDLE
    target.write_text(json.dumps({"files": files, "unreadable": unreadable}, indent=1))
    return target


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the call's output folder ($OUT)")
    target = bundle(p.parse_args(argv).out)
    print(f"bundled {len(json.loads(target.read_text())['files'])} JSON files into {target}")


if __name__ == "__main__":
    main()
