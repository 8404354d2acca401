"""`python -m fastim2col`'s command line: --help lists the subcommands and
every option's help with its default; the main job prints each row as it
finishes and `bench` a progress line per layer; both warn when the machine
looks busy and say how to get stable numbers."""
import contextlib
import io
import re
import subprocess
import sys

import pytest

from fastim2col import _bench


def _help(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        _bench.main(argv)
    assert exc.value.code == 0
    return out.getvalue()


def _option_helps(text):
    """{option: its help text} from argparse's options section."""
    section = text.split("options:\n", 1)[1].split("\n\n", 1)[0]
    helps, current = {}, None
    for line in section.splitlines():
        m = re.match(r"  (-\S+)", line)
        if m:
            current = m.group(1).split(",")[0]
            helps[current] = line[2:]
        elif current:
            helps[current] += " " + line.strip()
    return {k: " ".join(v.split()) for k, v in helps.items()}


@pytest.mark.parametrize("argv", [["--help"], ["bench", "--help"]])
def test_help_gives_every_option_a_default(argv):
    text = _help(argv)
    helps = _option_helps(text)
    expected = {"--threads", "--dtype", "--batch", "--layout", "--layers", "--rounds", "--repeat"}
    if argv[0] == "bench":
        expected |= {"--op", "--compare"}
    assert expected <= set(helps)
    for option, help_text in helps.items():
        if option == "-h":
            continue
        assert "(default:" in help_text, f"{option}: no default in its help: {help_text!r}"
    assert "for stable numbers" in text.lower()


def test_help_lists_the_subcommands():
    text = _help(["--help"])
    assert "subcommands:" in text
    sub = text.split("subcommands:", 1)[1]
    assert re.search(r"^  bench\s", sub, re.MULTILINE)
    assert re.search(r"^  \(none\)\s", sub, re.MULTILINE)
    assert "python -m fastim2col bench --help" in text


def test_help_subcommand():
    for argv, marker in ((["help"], "subcommands:"), (["help", "bench"], "--compare")):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert _bench.main(argv) == 0
        assert marker in out.getvalue()


def test_module_help_runs(tmp_path):
    """The real entry point, as a user types it (from an empty folder: in the
    checkout root its fastim2col/ folder would shadow an installed build)."""
    proc = subprocess.run([sys.executable, "-m", "fastim2col", "--help"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "bench" in proc.stdout and "(default:" in proc.stdout


@pytest.fixture
def fast_timing(monkeypatch):
    monkeypatch.setattr(_bench, "COOLDOWN_S", 0.0)
    monkeypatch.setattr(_bench, "WARMUP_S", 0.0)
    monkeypatch.setattr(_bench, "_load_warning", lambda threads: None)


def test_main_prints_each_row_as_it_finishes(monkeypatch, restore_threads, fast_timing):
    out = io.StringIO()
    seen = []
    real = _bench.timed_blocks

    def spy(*args, **kwargs):
        seen.append(out.getvalue().count(" ok"))     # rows printed before this layer's timing
        return real(*args, **kwargs)
    monkeypatch.setattr(_bench, "timed_blocks", spy)
    with contextlib.redirect_stdout(out):
        assert _bench.run_main(["--layers", "resnet_3x3_7,resnet_3x3_14", "--threads", "1",
                                "--rounds", "1", "--repeat", "1"]) == 0
    assert seen == [0, 1]          # the first row was out before the second layer ran
    lines = out.getvalue().splitlines()
    assert lines[1].split()[:3] == ["layer", "batch", "ms"]
    rows = [line.split() for line in lines[3:5]]
    assert [r[0] for r in rows] == ["resnet_3x3_7", "resnet_3x3_14"]
    assert all(r[-1] == "ok" for r in rows)


def test_bench_progress_lines(restore_threads, fast_timing):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert _bench.run_bench(["--layers", "resnet_3x3_7,resnet_1x1_56", "--threads", "1",
                                 "--rounds", "1", "--repeat", "1"]) == 0
    progress = err.getvalue().splitlines()
    assert progress[0].startswith("[1/2] resnet_3x3_7 batch 1: ")
    assert progress[1].startswith("[2/2] resnet_1x1_56 batch 1: ")
    assert "x gemm" in progress[0]


def test_busy_machine_warnings(monkeypatch, restore_threads, fast_timing):
    """A wide spread between rounds and a high load average are reported,
    with the advice for stable numbers."""
    monkeypatch.setattr(_bench, "_load_warning", lambda threads: "the load is high")

    def uneven(fns, rounds, repeat, per_round=None, **kwargs):
        for name in fns:
            fns[name]()
        if per_round is not None:
            per_round.update({name: [1.0 + r for r in range(rounds)] for name in fns})
        return {name: 1.0 for name in fns}
    monkeypatch.setattr(_bench, "timed_blocks", uneven)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _bench.run_main(["--layers", "resnet_3x3_7", "--threads", "1", "--rounds", "3"])
    text = " ".join(out.getvalue().split())          # the warnings are wrapped
    assert "warning: the machine looks busy" in text
    assert "the load is high" in text
    assert "differ by more than" in text and "resnet_3x3_7 (batch 1): 3.00x" in text
    assert "for stable numbers" in text


def test_no_warning_on_a_steady_run(monkeypatch, restore_threads, fast_timing):
    def steady(fns, rounds, repeat, per_round=None, **kwargs):
        if per_round is not None:
            per_round.update({name: [1.0] * rounds for name in fns})
        return {name: 1.0 for name in fns}
    monkeypatch.setattr(_bench, "timed_blocks", steady)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        _bench.run_main(["--layers", "resnet_3x3_7", "--threads", "1"])
    assert "warning" not in out.getvalue()


@pytest.mark.parametrize("t_one, t_many, warns", [(1.0, 1.0, True), (1.0, 2.0, True),
                                                   (1.0, 0.6, False)])
def test_threads_probe(monkeypatch, restore_threads, t_one, t_many, warns):
    """More threads no faster than one: a warning; the thread setting is
    restored either way."""
    import fastim2col
    monkeypatch.setattr(_bench, "timed_blocks",
                        lambda fns, *a, **k: {"1": t_one, "n": t_many})
    fastim2col.set_num_threads(2)
    got = _bench._threads_probe(fastim2col, [_bench.LAYERS["resnet_3x3_7"]], 1, "float32",
                                "NCHW", 2, 2)
    assert (got is not None) == warns
    if warns:
        assert "2 threads were no faster than 1" in got
    assert fastim2col.get_num_threads() in (1, 2)   # 1 in a build without OpenMP
    assert _bench._threads_probe(fastim2col, [], 1, "float32", "NCHW", 2, None) is None
    assert _bench._threads_probe(fastim2col, [_bench.LAYERS["resnet_3x3_7"]], 1, "float32",
                                 "NCHW", 1, None) is None


def test_load_warning(monkeypatch):
    monkeypatch.setattr(_bench.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    monkeypatch.setattr(_bench.os, "cpu_count", lambda: 2)
    assert "load average is 5.0 on 2 core(s)" in _bench._load_warning(2)
    monkeypatch.setattr(_bench.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert _bench._load_warning(2) is None


def test_bench_nd_help_and_a_tiny_run():
    text = _help(["bench-nd", "--help"])
    helps = _option_helps(text)
    assert {"--dims", "--layers", "--ops", "--dtype", "--compare"} <= set(helps)
    for option, help_text in helps.items():
        if option != "-h":
            assert "(default:" in help_text, f"{option}: no default in its help"
    assert "bench-nd" in _help(["--help"])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert _bench.main(["bench-nd", "--dims", "1", "--layers", "speech_dw_k9",
                            "--ops", "forward,weight", "--rounds", "1", "--repeat", "1",
                            "--no-memory"]) == 0
    table = out.getvalue()
    assert "speech_dw_k9" in table and "weight" in table and "1-D suite" in table
    assert "speech_dw_k9 forward:" in err.getvalue()   # the progress line
    with contextlib.redirect_stderr(io.StringIO()):
        assert _bench.main(["bench-nd", "--dims", "3", "--layers", "nope"]) == 2
