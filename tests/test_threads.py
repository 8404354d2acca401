"""Thread control, determinism for a thread count, agreement across thread
counts, and concurrent calls from several Python threads."""
import contextvars
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import fastim2col as F
import reference as R
from fastim2col._openmp_info import OPENMP_ENABLED
from conftest import LAYOUTS, as64, assert_close, cols_to, img_to, rand, split_small_work, \
    weight_to

pytestmark = pytest.mark.usefixtures("restore_threads")


@pytest.fixture
def split():
    with split_small_work():
        yield


def test_set_get_num_threads():
    default = F.get_num_threads()
    assert default >= 1
    for n in (1, 2, 3, 5):
        F.set_num_threads(n)
        assert F.get_num_threads() == (n if OPENMP_ENABLED else 1)
    F.set_num_threads(np.int64(2))
    assert F.get_num_threads() == (2 if OPENMP_ENABLED else 1)
    F.set_num_threads(None)
    assert F.get_num_threads() == default


@pytest.mark.parametrize("user", [None, 2, 4])
def test_threadpoolctl_limits_openmp(user):
    F.set_num_threads(user)
    before = F.get_num_threads()
    with threadpool_limits(limits=1, user_api="openmp"):
        assert F.get_num_threads() == 1
        x, w = np.ones((2, 3, 8, 8)), np.ones((4, 3, 3, 3))
        np.testing.assert_array_equal(F.conv2d(x, w), np.full((2, 4, 6, 6), 27.0))
    assert F.get_num_threads() == before


def test_blas_threads_restored_after_calls(rng):
    """The kernels pin BLAS to one thread while they run, and restore it."""
    def blas_threads():
        return sorted((i["filepath"], i["num_threads"]) for i in threadpool_info()
                      if i["user_api"] == "blas")
    before = blas_threads()
    x, w = rand(rng, (2, 3, 9, 9)), rand(rng, (4, 3, 3, 3))
    F.conv2d(x, w)
    F.grad.conv2d_weight(x, w.shape, rand(rng, (2, 4, 7, 7)))
    F.grad.conv2d_input(x.shape, w, rand(rng, (2, 4, 7, 7)))
    F.conv_transpose2d(rand(rng, (2, 4, 3, 3)), w)
    assert blas_threads() == before


# The calls below, with the planner's minimum work per thread lowered (the
# `split` fixture), split their work across threads: several tiles, bands,
# channel blocks and per-thread sums.


def test_split_fixture_reaches_the_planner(split):
    """Guard: the fixture does what the tests below rely on (if the planner's
    knobs are renamed, this fails rather than the tests going single-threaded)."""
    from fastim2col import _plan
    F.set_num_threads(3)
    expected = 3 if OPENMP_ENABLED else 1
    assert _plan.conv_threads(10.0) == expected
    assert _plan.copy_threads(10.0) == expected

def calls(rng, layout, dtype):
    kw = dict(padding=1, groups=2, layout=layout)
    x = img_to(rand(rng, (3, 8, 33, 30), dtype), layout)
    w = weight_to(rand(rng, (10, 4, 3, 3), dtype), layout)
    b = rand(rng, (10,), dtype)
    wd = weight_to(rand(rng, (8, 1, 5, 2), dtype), layout)
    g = img_to(rand(rng, (3, 10, 33, 30), dtype), layout)
    cols = cols_to(rand(rng, (3, 8 * 6, 31 * 30), dtype), 8, (2, 3), layout)
    wt = weight_to(rand(rng, (8, 3, 4, 4), dtype), layout)
    xt = img_to(rand(rng, (2, 8, 15, 17), dtype), layout)
    return {
        "im2col": lambda: F.im2col(x, (2, 3), padding=(0, 1), dilation=(2, 1), layout=layout),
        "col2im": lambda: F.col2im(cols, (33, 30), (2, 3), padding=(0, 1), dilation=(2, 1),
                                   layout=layout),
        "conv2d": lambda: F.conv2d(x, w, b, **kw),
        "depthwise": lambda: F.conv2d(x, wd, b[:8], padding=(2, 1), dilation=(1, 2), groups=8,
                                      layout=layout),
        "conv2d_input": lambda: F.grad.conv2d_input(x.shape, w, g, **kw),
        "conv2d_weight": lambda: F.grad.conv2d_weight(x, w.shape, g, **kw),
        "conv_transpose2d": lambda: F.conv_transpose2d(xt, wt, b[:6], stride=2, padding=1,
                                                       output_padding=1, groups=2,
                                                       layout=layout),
    }


NAMES = ["im2col", "col2im", "conv2d", "depthwise", "conv2d_input", "conv2d_weight",
         "conv_transpose2d"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_deterministic_for_a_thread_count(split, rng, layout, dtype, n_threads):
    F.set_num_threads(n_threads)
    for name, call in calls(rng, layout, dtype).items():
        first = call()
        for _ in range(3):
            np.testing.assert_array_equal(call(), first, err_msg=name, strict=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_counts_agree(split, rng, layout, dtype):
    """1, 2 and 4 threads agree to rounding, and with the reference."""
    fns = calls(rng, layout, dtype)
    results = {}
    for n in (1, 2, 4):
        F.set_num_threads(n)
        results[n] = {name: call() for name, call in fns.items()}
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for n in (2, 4):
        for name in NAMES:
            assert results[n][name].dtype == dtype
            np.testing.assert_allclose(results[n][name], results[1][name], rtol=tol,
                                       atol=tol * np.abs(results[1][name]).max(), err_msg=name)
    # one anchor against the reference, so that agreeing is not agreeing on garbage
    rng2 = np.random.default_rng(7)
    x, w = rand(rng2, (3, 8, 33, 30), dtype), rand(rng2, (10, 4, 3, 3), dtype)
    expected = img_to(R.conv2d(as64(x), as64(w), padding=1, groups=2), layout)
    for n in (1, 2, 4):
        F.set_num_threads(n)
        got = F.conv2d(img_to(x, layout), weight_to(w, layout), padding=1, groups=2,
                       layout=layout)
        assert_close(got, expected, dtype)


def test_concurrent_python_threads(split, rng):
    """Calls from several Python threads at once (each pinning BLAS to one
    thread and restoring it) give the single-threaded-caller results."""
    cases = []
    for i in range(8):
        x = rand(rng, (2, 4, 20 + i, 18), np.float64 if i % 2 else np.float32)
        w = rand(rng, (6, 2, 3, 3), x.dtype)
        cases.append((x, w))

    def work(case):
        x, w = case
        y = F.conv2d(x, w, padding=1, groups=2)
        gx = F.grad.conv2d_input(x.shape, w, y, padding=1, groups=2)
        gw = F.grad.conv2d_weight(x, w.shape, y, padding=1, groups=2)
        return y, gx, gw

    serial = [work(c) for c in cases]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(2):
            # each call in a copy of this context: the `split` thresholds
            # (context-local) apply in the pool's threads too
            contexts = [contextvars.copy_context() for _ in cases]
            parallel = list(pool.map(lambda context, case: context.run(work, case), contexts,
                                     cases))
            for s, p in zip(serial, parallel):
                for a, b in zip(s, p):
                    np.testing.assert_array_equal(a, b)
    for (x, w), (y, _, _) in zip(cases, serial):
        assert_close(y, R.conv2d(as64(x), as64(w), padding=1, groups=2), x.dtype)
