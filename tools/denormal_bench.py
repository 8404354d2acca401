"""conv2d time with denormal vs normal float32 (and float64) input, side by side.

    python -P tools/denormal_bench.py [--repeat 9]

Denormals (|x| < 1.18e-38 in float32, 2.2e-308 in float64) take a slow
microcode path on many x86 CPUs. fastim2col leaves the FPU mode alone (no
flush-to-zero), so it pays what the BLAS pays; NumPy's own matmul is timed
the same way for comparison. Prints medians and ratios.
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

import fastim2col as fi


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def pair(label, normal, denormal, repeat):
    normal(), denormal()                      # warm-up
    tn, td = [], []
    for _ in range(repeat):                   # interleaved: same machine state
        tn.append(median_time(normal, 1))
        td.append(median_time(denormal, 1))
    tn, td = float(np.median(tn)), float(np.median(td))
    print(f"{label:38s} normal {tn * 1e3:8.2f} ms  denormal {td * 1e3:8.2f} ms  "
          f"ratio {td / tn:6.1f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(platform.processor() or platform.machine(), "| kernel threads:", fi.get_num_threads())
    for dtype, scale in ((np.float32, 1e-39), (np.float64, 1e-310)):
        name = np.dtype(dtype).name
        x = rng.standard_normal((8, 16, 32, 32)).astype(dtype)
        w = rng.standard_normal((32, 16, 3, 3)).astype(dtype)
        xd = (x * dtype(scale)).astype(dtype)
        xh, xhd = np.ascontiguousarray(np.moveaxis(x, 1, 3)), np.ascontiguousarray(
            np.moveaxis(xd, 1, 3))
        wh = np.ascontiguousarray(np.moveaxis(w, 1, 3))
        pair(f"conv2d {name} NCHW (8,16,32,32)*(32,16,3,3)",
             lambda: fi.conv2d(x, w, padding=1), lambda: fi.conv2d(xd, w, padding=1),
             args.repeat)
        pair(f"conv2d {name} NHWC",
             lambda: fi.conv2d(xh, wh, padding=1, layout="NHWC"),
             lambda: fi.conv2d(xhd, wh, padding=1, layout="NHWC"), args.repeat)
        a = rng.standard_normal((512, 512)).astype(dtype)
        ad = (a * dtype(scale)).astype(dtype)
        pair(f"numpy matmul {name} 512x512", lambda: a @ a, lambda: ad @ a, args.repeat)


if __name__ == "__main__":
    main()
