"""What the tests/test_grad_*.py kernel-path files share: a loop over 1 and 3
kernel threads, and the tap-by-tap kernels' cases (input and weight
gradients).

Not a test module and not conftest.py: the test files import it by name
(tests/ is on sys.path, as for ``reference``).
"""
import fastim2col as F


def _thread_counts(calls):
    """1, then 3 kernel threads, the list of recorded plans cleared before each."""
    for threads in (1, 3):
        F.set_num_threads(threads)
        calls.clear()
        yield threads


# The tap-by-tap kernels' cases: (batch, channels, outputs, height, width,
# kernel, stride, padding, dilation, groups): 3x3 stride 1 and 2, dilation 2
# with groups, 1x1 stride 2.
_TAPS_CASES = [(1, 40, 16, 9, 11, 3, 1, 1, 1, 1), (3, 24, 26, 7, 6, 3, 2, 1, 1, 1),
               (2, 16, 12, 10, 9, 3, 1, 2, 2, 2), (2, 33, 8, 8, 8, 1, 2, 0, 1, 1)]
