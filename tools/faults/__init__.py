"""The reliability campaign: crash during save, corrupted files, disk faults, hostile guests.

One home for the machinery that both the CI tests (tests/test_reliability_*.py,
tests/test_hostile_guests.py, bounded sizes) and `python -m tools.bench faults` (the long run,
which reports counts) execute; they differ only in how many trials they draw.

- `outcome`: a trial's verdict (survived, lost data, wrong exception, hang, violation) and
  the per-category tally the bench prints.
- `corpus`: the sample VM and snapshots the file campaigns work on.
- `crash`: SIGKILL a process while it saves (or rebases) a snapshot, then check the remains.
- `mutate`: mutated state and memory files; every load/describe/verify must end in a
  SnapshotError or an intact snapshot.
- `disk`: failing writes, fsyncs and renames (injected, or a real full/read-only tmpfs).
- `hostile`: guests that misbehave on purpose; the VM stops or the guest sees the
  architected error, and nothing else in the process notices.
"""
