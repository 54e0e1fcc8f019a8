"""Snapshot actions to interrupt: each with its starting files and the outcomes it may have.

The crash campaign kills these actions and the disk campaign makes their I/O fail; both then
check the same things: the destination loads as `before` or `after`, the other snapshots in
the directory are untouched, and the action run again succeeds and leaves `final_names`.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from snapshot.errors import SnapshotError
from vmm.machine import MicroVM
from tools.faults.corpus import BASE_STEPS, QUANTUM, TOP_STEPS, Corpus, listing, loads_as, sample_vm
from tools.faults.outcome import Verdict, describe_exception

SUFFIXES = (".snap", ".mem")


@dataclass
class Scenario:
    """One action on the snapshot directory `directory`. `prepare()` empties it and puts the
    starting files in (hard links to the corpus, or copies with `copy=True` when the directory
    is on another filesystem, or `copy` is set because the action writes files in place);
    `action()` is what gets interrupted. `dest` must load as
    `before` (None: no snapshot) or `after`; `others` (name -> digest) must load unchanged
    throughout; once the action completes the directory holds exactly `final_names`."""

    name: str
    directory: Path
    files: dict[str, str]  # corpus snapshot -> name in `directory`
    corpus: Corpus
    action: Callable[[], object]
    dest: str
    before: str | None
    after: str
    others: dict[str, str] = field(default_factory=dict)
    final_names: frozenset[str] = frozenset()
    phases: list[str] = field(default_factory=list)  # traced calls of a kill-free run
    seconds: float = 0.0  # wall time of a kill-free run of the action
    copy: bool = False

    def prepare(self, *, copy: bool | None = None) -> None:
        copy = self.copy if copy is None else copy
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        for n in os.listdir(d):
            os.unlink(d / n)
        for theirs, ours in self.files.items():
            for suffix in SUFFIXES:
                src, dst = self.corpus.path(theirs + suffix), d / (ours + suffix)
                if copy:
                    copy_sparse(src, dst)
                else:
                    os.link(src, dst)

    def label(self, digest: str | None) -> str:
        if digest == self.before:
            return "nothing" if digest is None else "old"
        if digest == self.after:
            return "new"
        return "nothing" if digest is None else f"unknown state {digest}"

    def check_loads(self, allowed: tuple[str | None, ...]) -> tuple[Verdict, str, str]:
        """(verdict, detail, label): `dest` loads as one of `allowed` digests, `others`
        unchanged. SURVIVED with an empty detail if so."""
        d = self.directory
        left = sorted(listing(d))
        try:
            got = loads_as(d / self.dest)
        except SnapshotError as exc:
            return Verdict.LOST_DATA, f"{self.dest} does not load ({exc}); files: {left}", "error"
        except Exception as exc:
            return Verdict.WRONG_EXCEPTION, f"loading {self.dest}: {describe_exception(exc)}", "error"
        side = self.label(got)
        if got not in allowed:
            return Verdict.LOST_DATA, f"{self.dest} loads as {side}; files: {left}", side
        for name, digest in self.others.items():
            try:
                other = loads_as(d / name)
            except SnapshotError as exc:
                return Verdict.LOST_DATA, f"{name} does not load ({exc})", side
            if other != digest:
                return Verdict.LOST_DATA, f"{name} changed", side
        return Verdict.SURVIVED, "", side

    def check_final(self) -> tuple[Verdict, str]:
        """After the action completed: exactly `final_names`, and `dest` loads as `after`."""
        stray = sorted(listing(self.directory) - self.final_names)
        missing = sorted(self.final_names - listing(self.directory))
        if stray or missing:
            return Verdict.VIOLATION, f"stray files {stray}, missing {missing}"
        verdict, detail, _ = self.check_loads((self.after,))
        return verdict, detail


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy `src` to a new file `dst`, keeping its holes (SEEK_DATA/SEEK_HOLE), so a sparse
    memory file takes as little room in the copy as in the original."""
    fd_in = os.open(src, os.O_RDONLY)
    fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        size = os.fstat(fd_in).st_size
        os.ftruncate(fd_out, size)
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd_in, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(fd_in, start, os.SEEK_HOLE)
            while start < end:
                chunk = os.pread(fd_in, min(end - start, 1 << 20), start)
                os.pwrite(fd_out, chunk, start)
                start += len(chunk)
            offset = end
    finally:
        os.close(fd_in)
        os.close(fd_out)


def _pair(name: str) -> set[str]:
    return {name + suffix for suffix in SUFFIXES}


def save_scenarios(corpus: Corpus, workdir: Path) -> list[Scenario]:
    """Saves to interrupt, each in its own directory under `workdir`: a full save over a full
    snapshot, a diff over a diff (same base), a full save replacing a diff, and a first save
    into an empty directory."""
    digests = corpus.digests
    newer = sample_vm(BASE_STEPS + TOP_STEPS + 3)
    newer_digest = newer.state_digest()
    chain_files = {"base": "base", "top": "top"}
    chain_names = frozenset(_pair("base") | _pair("top"))
    scenarios = []

    d = workdir / "full-over-full"
    scenarios.append(
        Scenario("full over full", d, {"base": "vm"}, corpus, lambda d=d: newer.save_snapshot(d / "vm", "full"),
                 "vm", digests["base"], newer_digest, final_names=frozenset(_pair("vm")))
    )
    # A diff over base from a VM restored from this directory's base (so the diff's parent
    # link names base.snap here), replacing the diff `top` taken over the same base.
    d = workdir / "diff-over-diff"
    diff = Scenario("diff over diff", d, chain_files, corpus, lambda: None, "top", digests["top"], "",
                    others={"base": digests["base"]}, final_names=chain_names)
    diff.prepare()
    restored = MicroVM.load_snapshot(d / "base", "copy")
    restored.run((TOP_STEPS + 2) * QUANTUM)
    diff.after = restored.state_digest()
    diff.action = lambda d=d: restored.save_snapshot(d / "top", "diff")
    scenarios.append(diff)

    d = workdir / "full-over-diff"
    scenarios.append(
        Scenario("full over diff", d, chain_files, corpus, lambda d=d: newer.save_snapshot(d / "top", "full"),
                 "top", digests["top"], newer_digest, others={"base": digests["base"]}, final_names=chain_names)
    )
    d = workdir / "first-save"
    scenarios.append(
        Scenario("first save", d, {}, corpus, lambda d=d: newer.save_snapshot(d / "vm", "full"),
                 "vm", None, newer_digest, final_names=frozenset(_pair("vm")))
    )
    return scenarios


def rebase_available() -> bool:
    """True once snapshot.chain (rebase and verify) exists."""
    return importlib.util.find_spec("snapshot.chain") is not None


def rebase_scenarios(corpus: Corpus, workdir: Path) -> list[Scenario]:
    """Rebases to interrupt: the chain base <- top merged into a new full snapshot `flat`, and
    into `flat` when it already holds another snapshot. The chain must stay intact."""
    from snapshot.chain import rebase

    digests = corpus.digests
    chain = {"base": digests["base"], "top": digests["top"]}
    names = frozenset(_pair("base") | _pair("top") | _pair("flat"))
    scenarios = []
    for name, files, before in (
        ("rebase into a new name", {"base": "base", "top": "top"}, None),
        ("rebase over a snapshot", {"base": "base", "top": "top", "other": "flat"}, digests["other"]),
    ):
        d = workdir / name.replace(" ", "-")
        action = lambda d=d: rebase(d / "base", [d / "top"], d / "flat")  # noqa: E731
        scenarios.append(Scenario(name, d, files, corpus, action, "flat", before, digests["top"], others=chain, final_names=names))
    return scenarios
