"""The benchmark CLI's timing protocol (fastim2col._bench): block medians per
round on a simulated clock, and `python -m fastim2col bench`'s table."""
import contextlib
import io

import pytest

from fastim2col import _bench


class _FakeClock:
    """perf_counter() advanced only by the timed functions; sleep() free."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        pass


def test_timed_blocks_per_round(monkeypatch):
    """Each round's block median per function, and the overall median, on a
    clock that the functions advance by known amounts: `slow`'s k-th call
    (warm-ups included) takes k seconds, `fast`'s always 1."""
    clock = _FakeClock()
    monkeypatch.setattr(_bench, "time", clock)
    calls = {"slow": 0}

    def slow():
        calls["slow"] += 1
        clock.now += calls["slow"]

    def fast():
        clock.now += 1.0

    rounds, repeat, warmup = 3, 3, 2
    per_round: dict = {}
    got = _bench.timed_blocks({"slow": slow, "fast": fast}, rounds, repeat, warmup=warmup,
                              warmup_s=0.0, per_round=per_round)
    # round r: slow's calls r*5+1 .. r*5+5, the first two warm-ups
    block = warmup + repeat
    timed = [[r * block + warmup + i + 1 for i in range(repeat)] for r in range(rounds)]
    assert per_round["slow"] == [sorted(t)[repeat // 2] for t in timed] == [4, 9, 14]
    assert per_round["fast"] == [1.0] * rounds
    assert got == {"slow": 9, "fast": 1.0}   # the median of all nine timed calls
    assert _bench.round_ratios(per_round, "slow", ["fast"]) == [4, 9, 14]
    # against the faster of two others, round by round
    per_round["other"] = [8.0, 3.0, 7.0]
    assert _bench.round_ratios(per_round, "slow", ["fast", "other"]) == [4, 9, 14]
    assert _bench.round_ratios(per_round, "other", ["slow", "fast"]) == [8, 3, 7]
    assert _bench.round_ratios(per_round, "fast", ["slow", "other"]) == [1 / 4, 1 / 3, 1 / 7]


def _bench_table(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _bench.run_bench(argv) == 0
    return out.getvalue().splitlines()


@pytest.mark.parametrize("op", ["conv2d", "conv2d_input", "conv2d_weight", "im2col"])
def test_bench_cli_rounds_column(monkeypatch, restore_threads, op):
    """`bench` prints, per layer, the ratio to the GEMM and the least and the
    most of the rounds' own ratios (none for the copy operations)."""
    monkeypatch.setattr(_bench, "COOLDOWN_S", 0.0)
    monkeypatch.setattr(_bench, "WARMUP_S", 0.0)
    lines = _bench_table(["--layers", "resnet_3x3_7", "--rounds", "3", "--repeat", "1",
                          "--threads", "1", "--op", op])
    header = lines[1].split()
    assert header[:6] == ["layer", "batch", "ms", "GB/s" if op == "im2col" else "GFLOP/s",
                          "/gemm", "rounds"]
    row = dict(zip(header, lines[3].split()))
    assert row["layer"] == "resnet_3x3_7" and row["batch"] == "1"
    assert float(row["ms"]) > 0
    if op == "im2col":
        assert row["/gemm"] == row["rounds"] == "-"
        assert not any(line.startswith("rounds:") for line in lines)
        return
    low, high = (float(v) for v in row["rounds"].split("-"))
    assert 0 < low <= high
    assert float(row["/gemm"]) > 0
    assert any(line.startswith("rounds:") for line in lines)
    assert any(line.strip().startswith("vs gemm (groups=1 layers):") for line in lines)
