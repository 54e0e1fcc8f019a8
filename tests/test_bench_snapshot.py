"""tools.bench.snapshot runs its rounds to the end (its figures are timing; only their
presence and the work done are checked here)."""
from __future__ import annotations

from tools.bench import snapshot as bench
from vmm.layout import MIB


def test_the_snapshot_bench_completes_every_round_on_a_small_guest(tmp_path, monkeypatch) -> None:
    """Four rounds of five cases, rotated, put a diff round first right after another diff
    round (the fourth): its fresh base must not be refused as a link of the VM's chain (it
    was, and the bench stopped)."""
    monkeypatch.setenv("BENCH_DIR", str(tmp_path))
    figures = bench.run(size=16 * MIB, repeats=4)
    assert figures["diff_pages"] == 16 * MIB // bench.PAGE // 100
    assert figures["repeats"] == 4
    for name in ("full_save_vs_write", "full_save_vs_streamed_write", "diff_vs_full", "diff_vs_scattered_write", "floor_vs_full"):
        assert figures[name] > 0 and len(figures[f"{name}_spread"]) == 2
    assert list(tmp_path.iterdir()) == []  # the bench's directory is removed
