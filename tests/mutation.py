"""Mutation testing of the modules where a wrong line trains silently (mutmut 3; the record is tests/MUTATION.md).

    python tests/mutation.py step            # one module group: step, checkpoint, export, mask
    python tests/mutation.py all             # every group, one after the other
    python tests/mutation.py mask --keep     # leave the scratch copy (mutmut results / show there)
    python tests/mutation.py mask --rerun /tmp/radial-mutation/mask.json   # only the mutants a record left alive
    python tests/mutation.py export --minutes 60   # stop mutmut after an hour; the rest count as "not checked"
    python tests/mutation.py mask --mutants 'radial.mask.build.*' 'radial.mask.options.*'   # only these (fnmatch)

Each group runs in a scratch copy of the tracked tree (mutmut writes `mutants/` beside its config, and a group's
config is its own), mutates only that group's files and runs, per mutant, only the tests of the group's few test
files that reach the mutated function (`-n 0 -x`), under `nice -n 10`. Prints mutmut's counts and the surviving
mutants; not part of `make test` (minutes to an hour a group on two cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# group -> (files mutated, test files run); the tests are those that exercise the group's code directly and fast.
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "step": (
        ["train/step.py", "train/flow.py"],
        ["tests/test_train_flow.py", "tests/test_flow_oracle.py", "tests/test_step_timestep.py"],
    ),
    "checkpoint": (
        ["train/checkpoint.py"],
        ["tests/test_checkpoint_state.py", "tests/test_checkpoint_failures.py", "tests/test_resume_schedule.py"],
    ),
    "export": (
        ["radial/lora.py", "radial/comfy.py", "train/export.py"],
        [
            "tests/test_lora_attach.py",
            "tests/test_lora_comfy.py",
            "tests/test_lora_alpha.py",
            "tests/test_loss_curve.py",
            "tests/test_export_run.py",
            "tests/test_export_checkpoint.py",
            # the checkpoint-export CLI on a trained run (a 4-step run per mutant that reaches it); not
            # test_trainer_full.py (train.mode=full: a whole run per test), which test_export_run.py stands in for
            "tests/test_checkpoint_lora.py",
        ],
    ),
    "mask": (
        ["radial/mask/build.py", "radial/mask/options.py", "radial/mask/window.py", "radial/plan.py"],
        [
            "tests/test_mask_parity.py",
            "tests/test_mask_options.py",
            "tests/test_plan.py",
            "tests/test_plan_options.py",
            "tests/test_mask_window.py",
        ],
    ),
}
COPIED = ["benchmarks", "configs", "launch", "README.md", "Makefile"]


def setup_cfg(files: list[str], tests: list[str]) -> str:
    """mutmut's [mutmut] section for one group (setup.cfg: pyproject.toml has no [tool.mutmut], so this one rules)."""
    lines = [
        "[mutmut]",
        "source_paths =\n    radial\n    train\n    data",
        "only_mutate =\n" + "\n".join(f"    {f}" for f in files),
        "also_copy =\n" + "\n".join(f"    {p}" for p in COPIED),
        "pytest_add_cli_args_test_selection =\n" + "\n".join(f"    {t}" for t in tests),
        # -p no:randomly is not needed (not installed); -x stops a mutant's run at its first failing test.
        "pytest_add_cli_args =\n    -n\n    0\n    -x\n    -q\n    -p\n    no:cacheprovider",
        # torch's threads do not survive a fork from a process that ran tests; fork from a clean server instead.
        "process_isolation = forkserver",
        "use_git_change_detection = false",
    ]
    return "\n".join(lines) + "\n"


def scratch_copy(dest: Path) -> None:
    """The tracked and untracked-but-not-ignored files of this checkout, copied to `dest`."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    for rel in filter(None, out.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_mutmut(cmd: list[str], cwd: Path, env: dict, minutes: float | None) -> None:
    """mutmut run, stopped after `minutes` (SIGINT to its whole process group, as Ctrl-C would: mutmut keeps each
    finished mutant's result on disk, so the stats that follow count the rest as "not checked")."""
    # SIGINT at its default in the child: a background job or a pytest-xdist worker starts with it ignored
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    )
    try:
        proc.wait(timeout=None if minutes is None else minutes * 60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_group(
    name: str,
    work: Path,
    keep: bool,
    only: list[str] | None = None,
    record: str | None = None,
    minutes: float | None = None,
) -> dict:
    """Run mutmut on one group in `work`/name (`only`: these mutants, the rest stay "not checked"); return mutmut's
    stats (killed, survived, timeout, ...) and the mutants not killed, with their diffs; also written to `record`
    (default: `work`/name.json)."""
    files, tests = GROUPS[name]
    d = work / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    scratch_copy(d)
    (d / "setup.cfg").write_text(setup_cfg(files, tests))
    mutmut = [str(Path(sys.executable).parent / "mutmut")]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TRITON_INTERPRET": "1"}
    run_mutmut(["nice", "-n", "10", *mutmut, "run", "--max-children", "1", *(only or [])], d, env, minutes)
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=d, env=env, check=True, capture_output=True)
    stats = json.loads((d / "mutants" / "mutmut-cicd-stats.json").read_text())
    listing = subprocess.run([*mutmut, "results"], cwd=d, env=env, check=True, capture_output=True, text=True).stdout
    stats["not_killed"] = {}
    for line in filter(None, map(str.strip, listing.splitlines())):
        mutant, _, status = line.rpartition(": ")
        if status == "not checked":
            continue  # outside this rerun, or a run cut short: counted by mutmut's stats
        shown = subprocess.run([*mutmut, "show", mutant], cwd=d, env=env, capture_output=True, text=True).stdout
        diff = [x for x in shown.splitlines() if x[:1] in ("-", "+") and x[:3] not in ("---", "+++")]
        stats["not_killed"][mutant] = {"status": status, "diff": diff or shown.splitlines()[-6:]}
    if only:
        stats["only"] = only  # a rerun's mutants, or --mutants' globs
    if minutes is not None:
        stats["minutes_limit"] = minutes
    Path(record or work / f"{name}.json").write_text(json.dumps({"group": name, **stats}, indent=1))
    if not keep:
        shutil.rmtree(d)
    return stats


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("group", choices=[*GROUPS, "all"])
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "radial-mutation")
    p.add_argument("--keep", action="store_true", help="keep the scratch copy (mutmut show NAME works there)")
    p.add_argument("--rerun", type=Path, help="a group's record: run only the mutants it did not see killed")
    p.add_argument("--minutes", type=float, help="stop each group's mutmut run after this long (default: no limit)")
    p.add_argument("--mutants", nargs="+", metavar="GLOB", help="only mutants whose names match (module.function...)")
    args = p.parse_args(argv)
    if args.minutes is not None and args.minutes <= 0:
        p.error(f"--minutes {args.minutes}: expected > 0")
    if args.rerun and args.mutants:
        p.error("--rerun and --mutants: give one of them")
    alive = json.loads(args.rerun.read_text())["not_killed"] if args.rerun else {}
    only = sorted(m for m, info in alive.items() if info["status"] != "not checked") if args.rerun else args.mutants
    if only is not None and args.group == "all":
        p.error("--rerun and --mutants take one group")
    for name in GROUPS if args.group == "all" else [args.group]:
        record = str(args.work / f"{name}-{'rerun' if args.rerun else 'part'}.json") if only else None
        stats = run_group(name, args.work, args.keep, only, record, args.minutes)
        counts = {k: v for k, v in stats.items() if k != "not_killed"}
        print(json.dumps({"group": name, **counts}))
        for mutant, info in stats["not_killed"].items():
            print(f"{info['status']}: {mutant}", *info["diff"], sep="\n    ")
        print(f"(record: {record or args.work / f'{name}.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
