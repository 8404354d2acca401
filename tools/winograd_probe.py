"""How far Winograd's F(2x2, 3x3) could take float64 3x3 input gradients
(#4's float64 target), measured on a NumPy prototype, not a kernel.

    python -P tools/winograd_probe.py [--threads 2]

The input gradient of a stride-1, padding-1 3x3 layer is conv2d(grad_output,
the weights flipped and transposed). The prototype transforms the weights
(G g G^T) and 4x4 input tiles (B^T d B), runs the 16 GEMMs as one stacked
`np.matmul`, and transforms back (A^T m A). Its transforms are slow NumPy
einsums, so the number that matters is its GEMMs' time: a floor for any
F(2x2, 3x3) kernel on this machine's BLAS, printed beside fastim2col's
`grad.conv2d_input` and PyTorch's (needs PyTorch). Each result is checked
against fastim2col's.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastim2col
from fastim2col import _bench, grad

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], float)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], float)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], float)


def winograd_conv(x, w):
    """conv2d(x, w, padding=1) for x (N, C, H, W) with H, W even, w (O, C, 3,
    3); returns the result and the seconds of (input transform, GEMMs, output
    transform)."""
    n, c, h, wd = x.shape
    o = w.shape[0]
    u = np.einsum("ij,ocjk,lk->iloc", G, w, G).reshape(16, o, c)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    th, tw = h // 2, wd // 2
    s = xp.strides
    t0 = time.perf_counter()
    tiles = np.lib.stride_tricks.as_strided(
        xp, (n, c, th, tw, 4, 4), (s[0], s[1], 2 * s[2], 2 * s[3], s[2], s[3]))
    v = np.einsum("ij,nctujk,lk->ilcntu", B_T, tiles, B_T, optimize=True).reshape(
        16, c, n * th * tw)
    t1 = time.perf_counter()
    m = np.matmul(u, v)
    t2 = time.perf_counter()
    y = np.einsum("ij,jkop,lk->oilp", A_T, m.reshape(4, 4, o, n * th * tw), A_T, optimize=True)
    y = y.reshape(o, 2, 2, n, th, tw).transpose(3, 0, 4, 1, 5, 2).reshape(n, o, h, wd)
    return y, (t1 - t0, t2 - t1, time.perf_counter() - t2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch
    from threadpoolctl import ThreadpoolController
    ThreadpoolController().limit(limits=args.threads, user_api="blas")
    torch.set_num_threads(args.threads)
    fastim2col.set_num_threads(args.threads)
    for name, batch in [("resnet_3x3_14", 8), ("resnet_3x3_28", 8), ("resnet_3x3_14", 1)]:
        layer = _bench.LAYERS[name]
        x, w = _bench.make_inputs(layer, batch, np.float64)
        go = np.random.default_rng(2).standard_normal((batch, layer.c_out, layer.size, layer.size))
        flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        want = grad.conv2d_input(x.shape, w, go, 1, 1)
        got, _ = winograd_conv(go, flipped)
        err = float(np.abs(got - want).max() / np.abs(want).max())
        tx, tw, tg = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(go)
        t = _bench.timed_blocks({
            "fastim2col": lambda: grad.conv2d_input(x.shape, w, go, 1, 1),
            "torch": lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tg, 1, 1)}, 3, 3)
        parts = [winograd_conv(go, flipped)[1] for _ in range(5)]
        gemms = statistics.median(q[1] for q in parts)
        print(f"{name} batch {batch}: fastim2col {t['fastim2col'] * 1e3:.1f} ms, torch "
              f"{t['torch'] * 1e3:.1f} ms; Winograd's 16 GEMMs alone {gemms * 1e3:.1f} ms "
              f"({gemms / t['torch']:.2f}x torch; NumPy transforms "
              f"{statistics.median(q[0] + q[2] for q in parts) * 1e3:.1f} ms more); "
              f"max error {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
