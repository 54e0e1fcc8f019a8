"""Saves over a VM's own snapshot chain: no save may make a snapshot of the chain unrestorable.

A trial builds a chain s0 (full) <- s1 <- ... (diffs) of one run (or restores a VM from one
of its links), then saves to a name: any link of the chain or a new one, full or diff. The
rule (vmm.persist): a diff to any link, or a full snapshot to a link that has a diff over it
in the chain, is refused with a SnapshotError before anything is written; every other save
succeeds. Either way, every snapshot of the chain must still restore to the state it was
taken at, and a successful save must restore to the VM's state.
"""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Iterator

from snapshot.errors import SnapshotError
from tools.faults.corpus import QUANTUM, sample_vm
from tools.faults.outcome import Stopwatch, Trial, Verdict, describe_exception, failed
from vmm.machine import MicroVM

STEP = 3  # quanta run between snapshots


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def plans(max_links: int = 4) -> Iterator[tuple[int, int | None, str, str]]:
    """(links, restored_from, target, kind): a chain of `links` snapshots; the VM saving is the
    one that took them (restored_from None) or one restored from link `restored_from`; it saves
    to `target` (a link's name or "new") as `kind`."""
    for links in range(1, max_links + 1):
        for restored_from in (None, *range(links)):
            names = [f"s{i}" for i in range(links)] + ["new"]
            for target, kind in itertools.product(names, ("full", "diff")):
                yield links, restored_from, target, kind


def _top(links: int, restored_from: int | None) -> int:
    """The link the saving VM's chain ends at."""
    return links - 1 if restored_from is None else restored_from


def refused(links: int, restored_from: int | None, target: str, kind: str) -> bool:
    """Whether the rule refuses this save: the target has a diff over it on disk (every link
    but the last of the run), or it is a diff to a link of the saving VM's chain."""
    if target == "new":
        return False
    link = int(target[1:])
    return link < links - 1 or (kind == "diff" and link <= _top(links, restored_from))


def run_trial(d: Path, links: int, restored_from: int | None, target: str, kind: str) -> Trial:
    origin = "the run's VM" if restored_from is None else f"a VM restored from s{restored_from}"
    case = f"chain of {links}, {origin} saves a {kind} to {target}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    watch = Stopwatch()
    try:
        vm = sample_vm(STEP)
        taken: dict[str, str] = {}
        for i in range(links):
            if i:
                vm.run(STEP * QUANTUM)
            vm.save_snapshot(d / f"s{i}", "full" if i == 0 else "diff")
            taken[f"s{i}"] = vm.state_digest()
        if restored_from is not None:
            vm = MicroVM.load_snapshot(d / f"s{restored_from}")
        vm.run(STEP * QUANTUM)
        before = _files(d)
        must_refuse = refused(links, restored_from, target, kind)
        try:
            vm.save_snapshot(d / target, kind)  # type: ignore[arg-type]
        except SnapshotError as exc:
            if not must_refuse:
                return failed(case, Verdict.VIOLATION, f"refused a save the rule allows: {exc}", seconds=watch.seconds)
            if _files(d) != before:
                return failed(case, Verdict.VIOLATION, "a refused save changed the directory", seconds=watch.seconds)
        else:
            if must_refuse:
                return failed(case, Verdict.VIOLATION, "saved where the rule refuses", seconds=watch.seconds)
            taken[target] = vm.state_digest()
        for name, digest in taken.items():
            try:
                found = MicroVM.load_snapshot(d / name).state_digest()
            except SnapshotError as exc:
                return failed(case, Verdict.LOST_DATA, f"{name} no longer restores: {exc}", seconds=watch.seconds)
            if found != digest:
                return failed(case, Verdict.LOST_DATA, f"{name} restores to another state", seconds=watch.seconds)
    except Exception as exc:
        return failed(case, Verdict.WRONG_EXCEPTION, describe_exception(exc), seconds=watch.seconds)
    return Trial(case, Verdict.SURVIVED, "", watch.seconds, ("outcome:refused" if must_refuse else "outcome:saved",))
