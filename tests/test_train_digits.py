"""A shortened run of examples/train_digits.py: the CNN trained end to end with
fastim2col's conv2d and its gradients must learn the digits."""
import importlib.util
import io
import sys
from pathlib import Path

import pytest

import fastim2col

pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_digits.py"


def _load_example():
    # examples/ is not a package: load the script as a module from its path
    # (registered in sys.modules first, as its dataclass needs).
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


td = _load_example()


@pytest.fixture(autouse=True)
def one_thread():
    # Like the example's default: these tiny convolutions run best on one
    # thread, and it keeps the test fast on a busy machine.
    fastim2col.set_num_threads(1)
    yield
    fastim2col.set_num_threads(None)


@pytest.fixture(scope="module")
def digits():
    return td.load_data(seed=0)


def test_short_run_learns(digits):
    history = td.train(epochs=3, seed=0, quiet=True, data=digits)
    assert len(history.loss) == len(history.test_accuracy) == 3
    # The training loss falls every epoch, from about ln(10) = 2.3 at the start.
    assert all(b < a for a, b in zip(history.loss, history.loss[1:])), history.loss
    assert history.loss[-1] < 0.3, history.loss
    # Chance is 10%; 3 epochs reach 94-99% over seeds 0-9.
    assert history.test_accuracy[-1] > 0.85, history.test_accuracy
    assert history.train_accuracy[-1] > 0.85, history.train_accuracy


def test_fixed_seed_is_deterministic(digits):
    first = td.train(epochs=2, seed=0, quiet=True, data=digits)
    second = td.train(epochs=2, seed=0, quiet=True, data=digits)
    assert first == second


def test_epoch_lines(digits):
    out = io.StringIO()                      # not a terminal: one line per epoch
    td.train(epochs=2, seed=0, data=digits, file=out)
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3, lines
    for epoch, line in enumerate(lines[:2], 1):
        assert line.startswith(f"epoch {epoch}/2 [{'#' * 30}] 45/45  loss "), line
        assert "train acc" in line and "test acc" in line


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_live_progress_bar(digits):
    out = _Terminal()                        # a terminal: the bar is redrawn per batch
    td.train(epochs=1, seed=0, data=digits, file=out)
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    redraws = text.split("\r")[1:]
    assert len(redraws) == 45 + 1            # one per batch, then the epoch's line
    assert redraws[0].startswith("epoch 1/1 [...") and "]  1/45  loss " in redraws[0]
    assert "test acc" in redraws[-1]


def test_main_quiet(capsys):
    history = td.main(["--epochs", "1", "--quiet", "--seed", "1", "--batch-size", "64"])
    out = capsys.readouterr().out
    assert out.startswith("final test accuracy:"), out
    assert out.count("\n") == 1
    assert len(history.loss) == 1
