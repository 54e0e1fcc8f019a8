"""`faults`: the reliability campaign at full size, reported as counts per category.

- crash: SIGKILL during saves (full over full, diff over diff, full over diff, first save)
  and rebases, at random calls of every phase and at random times (tools.faults.crash).
- files: mutated state and memory files, drawn by hypothesis (tools.faults.mutate), then a
  truncation at every region boundary of every file; each case is held to FILE_CASE_SECONDS (over it counts as a hang) and its state-file decode to
  mutate.DECODE_MEMORY_BOUND bytes of memory (tracemalloc peak).
- disk: injected ENOSPC/EIO/EROFS/EDQUOT/EFBIG/EACCES at every kind of call, and real ones: a
  full or read-only tmpfs, a file-size limit (tools.faults.disk).
- hostile: the hostile-guest catalog, wild jumps and random programs, and a bystander VM
  (tools.faults.hostile).
- signals: SIGINT/SIGTERM at random moments of `vm.run()` (in process) and of `microvm run`
  with snapshot points (real signals to a subprocess): a pause at a round end that continues
  like an uninterrupted twin, exit 130/143 with one line, only complete snapshots
  (tools.faults.signals).
- cli: hostile paths and files for every input of the command (snapshot folder, MMDS data,
  console input, guest images, ELF headers, JSON bombs) and unwritable stdout: one line, exit
  2, nothing written, in CASE_SECONDS (tools.faults.cli_input).
- saves: every save (full, diff) to every link of chains of up to 4 snapshots, from the run's
  VM and from VMs restored from each link: refused or done, no snapshot left unrestorable
  (tools.faults.saves).

Every category prints trials, survived, lost_data, wrong_exception, hangs and violations;
all but trials and survived must be 0. `--quick` runs CI-like sizes.
"""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

from tools.faults import cli_input, crash, disk, hostile, mutate, saves, scenarios, signals
from tools.faults.corpus import build_corpus, scratch_directory
from tools.faults.outcome import Tally, Verdict

SEED = 20_240_808
FILE_CASE_SECONDS = 5.0  # wall-time bound on one mutated-file case (load, describe, verify); the slowest takes ~1 s on a loaded 2-core machine
FULL = {"kills": 26, "rebase_kills": 15, "faults_per_call": 4, "enospc_sizes": 6, "files": 10_000, "jumps": 140, "soups": 120, "chain_links": 4, "signals": 40, "signal_cli": 12, "cli": 400}
QUICK = {"kills": 3, "rebase_kills": 2, "faults_per_call": 1, "enospc_sizes": 2, "files": 300, "jumps": 14, "soups": 10, "chain_links": 2, "signals": 4, "signal_cli": 2, "cli": 30}
SOUP_BUDGET = 20_000  # instructions per random program


def _crash(all_scenarios: list[scenarios.Scenario], sizes: dict[str, int], rng: random.Random) -> Tally:
    tally = Tally()
    trace = crash.Trace()
    for s in all_scenarios:
        crash.measure(s, trace)
        count = sizes["rebase_kills"] if s.name.startswith("rebase") else sizes["kills"]
        for kill in crash.kill_points(s, rng, count):
            tally.add(crash.run_trial(s, kill, trace))
    return tally


def _disk(all_scenarios: list[scenarios.Scenario], sizes: dict[str, int], rng: random.Random) -> Tally:
    tally = Tally()
    real = disk.real_filesystems_available()
    for s in all_scenarios:
        for fault in disk.faults_for(disk.count_calls(s), rng, sizes["faults_per_call"]):
            tally.add(disk.run_injected(s, fault))
        if real:
            for real_fault in disk.real_faults(s, sizes["enospc_sizes"]):
                tally.add(disk.run_real(s, real_fault))
    if not real:
        print("  disk: no CAP_SYS_ADMIN for a private tmpfs: real ENOSPC/EROFS trials skipped")
    return tally


def _files(info: mutate.CorpusInfo, d: Path, count: int) -> Tally:
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st

    tally = Tally()
    limits = mutate.CaseLimits(seconds=FILE_CASE_SECONDS, measure_memory=True)

    @seed(SEED)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(st.randoms(use_true_random=True), st.sampled_from(mutate.WEIGHTED_FAMILIES))
    def case(rng: random.Random, family: str) -> None:
        tally.add(mutate.run_case(info, mutate.draw(rng, info, family), d, limits))

    case()
    for mutation in mutate.truncations(info):  # and every region boundary, once
        tally.add(mutate.run_case(info, mutation, d, limits))
    return tally


def _hostile(d: Path, sizes: dict[str, int], rng: random.Random) -> Tally:
    tally = Tally()
    bystander = hostile.Bystander()
    guests = hostile.catalog() + list(hostile.random_guests(rng, sizes["jumps"], sizes["soups"], budget=SOUP_BUDGET))
    for guest in guests:
        tally.add(hostile.run_guest(guest, d, bystander))
    tally.add(bystander.check())
    return tally


def _signals(d: Path, sizes: dict[str, int], rng: random.Random) -> Tally:
    tally = Tally()
    for _ in range(sizes["signals"]):
        tally.add(signals.run_inprocess(signals.draw(rng)))
    for i in range(sizes["signal_cli"]):
        tally.add(signals.run_cli(signals.draw(rng), d / f"cli-{i}"))
    return tally


def _cli(d: Path, sizes: dict[str, int], rng: random.Random) -> Tally:
    tally = Tally()
    for case in cli_input.fixed_cases() + list(cli_input.random_cases(rng, sizes["cli"])):
        tally.add(cli_input.run_case(case, d))
    for stdout_case in cli_input.stdout_cases():
        tally.add(cli_input.run_stdout_case(*stdout_case))
    return tally


def _saves(d: Path, max_links: int) -> Tally:
    tally = Tally()
    for plan in saves.plans(max_links):
        tally.add(saves.run_trial(d, *plan))
    return tally


def _show(name: str, tally: Tally) -> None:
    f = tally.figures()
    counts = "  ".join(f"{v.value} {f[v.value]}" for v in Verdict)
    print(f"{name:8} trials {tally.trials:6}  {counts}  (slowest {tally.max_seconds:.2f} s)")
    for trial in tally.failures[:10]:
        print(f"  FAILED {trial}")


def run(quick: bool = False) -> dict[str, object]:
    sizes = QUICK if quick else FULL
    rng = random.Random(SEED)
    tallies: dict[str, Tally] = {}
    # Kills and disk faults run on the default temporary directory (a real filesystem: real
    # fsyncs and renames); mutated files and guests on a RAM filesystem if there is one.
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp, scratch_directory() as scratch:
        root = Path(tmp)
        corpus = build_corpus(root / "corpus")
        todo = scenarios.save_scenarios(corpus, root / "scenarios")
        if scenarios.rebase_available():
            todo += scenarios.rebase_scenarios(corpus, root / "scenarios")
        else:
            print("  snapshot.chain is missing: no rebase trials")
        tallies["crash"] = _crash(todo, sizes, rng)
        _show("crash", tallies["crash"])
        tallies["disk"] = _disk(todo, sizes, rng)
        _show("disk", tallies["disk"])
        tallies["files"] = _files(mutate.load_info(build_corpus(scratch / "corpus")), scratch / "case", sizes["files"])
        _show("files", tallies["files"])
        tallies["hostile"] = _hostile(scratch / "guest", sizes, rng)
        _show("hostile", tallies["hostile"])
        tallies["saves"] = _saves(scratch / "saves", sizes["chain_links"])
        _show("saves", tallies["saves"])
        tallies["signals"] = _signals(root / "signals", sizes, rng)
        _show("signals", tallies["signals"])
        tallies["cli"] = _cli(scratch / "cli", sizes, rng)
        _show("cli", tallies["cli"])
    figures: dict[str, object] = {name: tally.figures() for name, tally in tallies.items()}
    totals = {v.value: sum(t.verdicts[v] for t in tallies.values()) for v in Verdict}
    totals["trials"] = sum(t.trials for t in tallies.values())
    figures["totals"] = totals
    figures["file_case_seconds_bound"] = FILE_CASE_SECONDS
    figures["cli_case_seconds_bound"] = cli_input.CASE_SECONDS
    figures["decode_memory_bound_bytes"] = mutate.DECODE_MEMORY_BOUND
    figures["all_survived"] = all(t.clean for t in tallies.values())
    print(f"total    trials {totals['trials']:6}  " + "  ".join(f"{v.value} {totals[v.value]}" for v in Verdict))
    return figures
