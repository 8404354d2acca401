"""
Speed across layers: fastim2col, NumPy and PyTorch
==================================================

Time :func:`fastim2col.conv2d` against the textbook NumPy im2col
(``sliding_window_view``, copied contiguous, then one matmul) and, when it
is installed, ``torch.nn.functional.conv2d``, on a few layers of ResNet-50
(float32, batch 1, NCHW). Each implementation runs in its own warmed-up
block and the median call is reported, as ``python -m fastim2col bench``
does; that command measures the whole suite with more care.
"""
# %%
import time

import matplotlib.pyplot as plt
import numpy as np

import fastim2col
from fastim2col._bench import LAYERS, make_inputs, numpy_conv2d

try:
    import torch
except ImportError:           # PyTorch is optional: its bars are left out
    torch = None

names = ["resnet_3x3_56", "resnet_3x3_28", "resnet_3x3_14", "resnet_3x3_7", "resnet_1x1_56"]


def median_time(fn, seconds=0.15, min_calls=3):
    fn()                                            # warm up
    times, start = [], time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


results = {"fastim2col": [], "NumPy": []}
if torch is not None:
    results["PyTorch"] = []
    torch.set_num_threads(fastim2col.get_num_threads())
for name in names:
    layer = LAYERS[name]
    x, w = make_inputs(layer, 1, np.float32)
    s, p = layer.stride, layer.padding
    assert np.allclose(fastim2col.conv2d(x, w, None, s, p),
                       numpy_conv2d(x, w, s, p, 1), rtol=1e-3, atol=1e-3)
    gflop = layer.flops(1) / 1e9
    results["fastim2col"].append(gflop / median_time(lambda: fastim2col.conv2d(x, w, None, s, p)))
    results["NumPy"].append(gflop / median_time(lambda: numpy_conv2d(x, w, s, p, 1)))
    if torch is not None:
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        results["PyTorch"].append(gflop / median_time(
            lambda: torch.nn.functional.conv2d(tx, tw, None, s, p)))
    print(f"{name:>14}: " + "  ".join(f"{k} {v[-1]:6.1f} GFLOP/s" for k, v in results.items()))

# %%
# Throughput per layer (higher is better).
fig, ax = plt.subplots(figsize=(9, 3.8))
width = 0.8 / len(results)
for k, (label, values) in enumerate(results.items()):
    ax.bar(np.arange(len(names)) + (k - (len(results) - 1) / 2) * width, values, width,
           label=label)
ax.set_xticks(range(len(names)), names, rotation=20)
ax.set_ylabel("GFLOP/s")
ax.set_title(f"conv2d, float32, batch 1, {fastim2col.get_num_threads()} thread(s)"
             + ("" if torch is not None else " (PyTorch not installed)"))
ax.legend()
fig.tight_layout()
