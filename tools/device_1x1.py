"""1x1 gradients at 16 threads: why slower than the GEMM? (device experiment)"""
import os, sys, time, statistics
import numpy as np
import fastim2col as fi
from fastim2col import grad, _plan, _threads, _conv
from fastim2col._bench import bare_gemm, LAYERS, timed_blocks, _limits
from threadpoolctl import threadpool_info

T = int(sys.argv[1]) if len(sys.argv) > 1 else 16
fi.set_num_threads(T)
L = LAYERS["resnet_1x1_56"]
rng = np.random.default_rng(0)
n = 16
x = rng.standard_normal((n, 64, 56, 56)).astype(np.float32)
w = rng.standard_normal((256, 64, 1, 1)).astype(np.float32)
go = rng.standard_normal((n, 256, 56, 56)).astype(np.float32)
dx = np.empty_like(x); dw = np.empty_like(w); y = np.empty_like(go)

seen = []
real_gi = _conv.gemm_grad_input
def spy(*a, **k):
    seen.append([(d["filepath"].split("/")[-1], d["num_threads"]) for d in threadpool_info()
                 if d["user_api"] == "blas"])
    return real_gi(*a, **k)

with _limits(T):
    _conv.gemm_grad_input = spy
    grad.conv2d_input(x.shape, w, go, out=dx)
    _conv.gemm_grad_input = real_gi
    print("BLAS threads while the input-gradient kernel runs:", seen[-1])
    print("outside:", [(d["filepath"].split("/")[-1], d["num_threads"]) for d in threadpool_info()
                       if d["user_api"] == "blas"])
    fns = {"fwd": lambda: fi.conv2d(x, w, out=y),
           "input": lambda: grad.conv2d_input(x.shape, w, go, out=dx),
           "weight": lambda: grad.conv2d_weight(x, w.shape, go, out=dw)}
    for k, f in bare_gemm(L, n, np.float32, "conv2d_input").items():
        fns["gemm_in_" + k] = f
    for k, f in bare_gemm(L, n, np.float32, "conv2d_weight").items():
        fns["gemm_w_" + k] = f
    t = timed_blocks(fns, 3, 5)
    print({k: round(v * 1e3, 2) for k, v in t.items()})
    # variants: input gradient with tiles of 784 / 392 positions (more units)
    real = _plan.grad_input
    for tile in (784, 392):
        _plan.grad_input = lambda *a, tile=tile: (tile, 64)
        t = timed_blocks({"input_tile%d" % tile: lambda: grad.conv2d_input(x.shape, w, go, out=dx)}, 3, 5)
        print({k: round(v * 1e3, 2) for k, v in t.items()})
    _plan.grad_input = real
    # weight gradient: per-thread sums vs blocks
    real_w = _plan.grad_weight
    _plan.grad_weight = lambda *a: (3136, 64, False)
    t = timed_blocks({"weight_blocks": lambda: grad.conv2d_weight(x, w.shape, go, out=dw)}, 3, 5)
    print({k: round(v * 1e3, 2) for k, v in t.items()})
    _plan.grad_weight = real_w
