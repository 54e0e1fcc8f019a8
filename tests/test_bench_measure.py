"""tools.bench.measure: interleaved rounds, warm-up, best and spread."""
from __future__ import annotations

from tools.bench.measure import Samples, add_ratio, interleave, ratio, ratio_median, ratio_spread


def test_rounds_are_interleaved_rotated_and_warmed_up() -> None:
    calls: list[str] = []
    times = {"a": iter([9.0, 1.0, 2.0, 3.0]), "b": iter([9.0, 4.0, 5.0, 6.0]), "c": iter([9.0, 7.0, 8.0, 9.5])}

    def case(name: str):  # type: ignore[no-untyped-def]
        return lambda: (calls.append(name), next(times[name]))[1]

    samples = interleave({n: case(n) for n in "abc"}, repeats=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then rotated rounds
    assert samples["a"].seconds == [1.0, 2.0, 3.0]  # the warm-up sample is not kept
    assert samples["b"].best == 4.0 and samples["c"].best == 7.0


def test_ratio_and_spread() -> None:
    fast, slow = Samples([1.0, 2.0]), Samples([3.0, 3.0])
    assert ratio(fast, slow) == 3.0
    assert ratio_spread(fast, slow) == [1.5, 3.0]
    assert Samples([2.0, 3.0]).spread == 0.5
    figures: dict[str, object] = {}
    assert add_ratio(figures, "x", fast, slow) == 3.0 and figures == {"x": 3.0, "x_spread": [1.5, 3.0], "x_median": 2.25}


def test_the_median_ratio_pairs_rounds() -> None:
    """Each round's two samples are compared with each other, not best with best: a side whose
    one fast round came in another round than the other side's does not decide it."""
    a = Samples([1.0, 4.0, 4.0, 4.0, 4.0])  # one lucky round
    b = Samples([6.0, 6.0, 6.0, 6.0, 2.0])  # its lucky round elsewhere
    assert ratio(a, b) == 2.0  # best of each: a looks 2x faster
    assert ratio_median(a, b) == 1.5  # round by round: 6, 1.5, 1.5, 1.5, 0.5
