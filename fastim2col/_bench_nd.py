"""``python -m fastim2col bench-nd``: the 1-D and 3-D layer suites.

Each layer's forward, input gradient and weight gradient, timed by the same
protocol as ``bench`` (alternating warmed-up blocks, medians; fastim2col._bench
.timed_blocks), against PyTorch when ``--compare torch`` and it is installed,
with the extra peak memory of fastim2col's call. Results are checked against
PyTorch's where it runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, NamedTuple

import numpy as np

from . import _bench


class LayerND(NamedTuple):
    name: str
    c_in: int
    c_out: int
    size: tuple        # (L,) or (D, H, W)
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1

    def out_sizes(self) -> tuple:
        return tuple((s + 2 * self.padding - self.dilation * (self.kernel - 1) - 1)
                     // self.stride + 1 for s in self.size)

    def flops(self, batch: int) -> float:
        positions = float(np.prod(self.out_sizes()))
        taps = self.kernel ** len(self.size)
        return 2.0 * batch * self.c_out * positions * (self.c_in // self.groups) * taps


# The suites of issue #24: video and volume networks, signal networks.
LAYERS_3D = {
    "c3d_conv2": LayerND("c3d_conv2", 64, 128, (8, 56, 56), 3, 1, 1),
    "unet3d_enc": LayerND("unet3d_enc", 32, 64, (32, 64, 64), 3, 1, 1),
    "deep_128": LayerND("deep_128", 128, 128, (8, 16, 16), 3, 1, 1),
    "i3d_1x1x1": LayerND("i3d_1x1x1", 192, 64, (8, 28, 28), 1),
    "r3d_s2": LayerND("r3d_s2", 64, 128, (8, 56, 56), 3, 2, 1),
    "x3d_dw": LayerND("x3d_dw", 96, 96, (16, 28, 28), 3, 1, 1, 1, 96),
}
LAYERS_1D = {
    "wavenet_k2_d8": LayerND("wavenet_k2_d8", 64, 64, (16000,), 2, 1, 0, 8),
    "ecg_k7_s2": LayerND("ecg_k7_s2", 64, 64, (5000,), 7, 2, 3),
    "tcn_k3_256": LayerND("tcn_k3_256", 256, 256, (1024,), 3, 1, 4, 4),
    "speech_dw_k9": LayerND("speech_dw_k9", 256, 256, (1600,), 9, 1, 4, 1, 256),
}
SUITES = {1: LAYERS_1D, 3: LAYERS_3D}
OPS = ("forward", "input", "weight")


def make_inputs(layer: LayerND, batch: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, layer.c_in) + layer.size).astype(dtype)
    w = rng.standard_normal((layer.c_out, layer.c_in // layer.groups)
                            + (layer.kernel,) * len(layer.size)).astype(dtype)
    go = rng.standard_normal((batch, layer.c_out) + layer.out_sizes()).astype(dtype)
    return x, w, go


def ours(fastim2col, layer: LayerND, op: str, x, w, go):
    nd = len(layer.size)
    args = (layer.stride, layer.padding, layer.dilation, layer.groups)
    if op == "forward":
        conv = getattr(fastim2col, f"conv{nd}d")
        return lambda: conv(x, w, None, *args)
    if op == "input":
        grad = getattr(fastim2col.grad, f"conv{nd}d_input")
        return lambda: grad(x.shape, w, go, *args)
    grad = getattr(fastim2col.grad, f"conv{nd}d_weight")
    return lambda: grad(x, w.shape, go, *args)


def theirs(torch, layer: LayerND, op: str, x, w, go):
    nd = len(layer.size)
    tx, tw, tgo = (torch.from_numpy(a) for a in (x, w, go))
    args = (layer.stride, layer.padding, layer.dilation, layer.groups)
    if op == "forward":
        conv = getattr(torch.nn.functional, f"conv{nd}d")
        return lambda: conv(tx, tw, None, *args)
    if op == "input":
        grad = getattr(torch.nn.grad, f"conv{nd}d_input")
        return lambda: grad(x.shape, tw, tgo, *args)
    grad = getattr(torch.nn.grad, f"conv{nd}d_weight")
    return lambda: grad(tx, w.shape, tgo, *args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastim2col bench-nd",
        description=_bench._wrap("Time the 1-D or 3-D layer suite (forward and both "
                                 "gradients) and, with --compare torch, PyTorch's; extra "
                                 "peak memory of fastim2col's calls."),
        epilog=_bench._wrap(_bench.STABLE_TIPS[0].upper() + _bench.STABLE_TIPS[1:] + "."),
        formatter_class=_bench._HelpFormatter)
    p.add_argument("--dims", type=int, choices=[1, 3], default=3,
                   help="the suite: 1-D (signals) or 3-D (volumes) (default: %(default)s)")
    p.add_argument("--layers", default=None,
                   help="comma-separated layer names (default: the whole suite: "
                        + "; ".join(f"{d}-D: " + ",".join(s) for d, s in SUITES.items())
                        + ")")
    p.add_argument("--ops", default=",".join(OPS),
                   help="comma-separated, from forward,input,weight (default: %(default)s)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="(default: %(default)s)")
    p.add_argument("--batch", type=int, default=1, help="(default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="(default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds of timed blocks (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=2,
                   help="timed calls a block (default: %(default)s)")
    p.add_argument("--compare", default="", help="'torch' to time PyTorch too (default: none)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the extra-peak-memory pass (default: measured)")
    return p


def run(argv=None) -> int:
    args = parser().parse_args(argv)
    import fastim2col
    suite = SUITES[args.dims]
    names = args.layers.split(",") if args.layers else list(suite)
    unknown = [n for n in names if n not in suite]
    if unknown:
        print(f"unknown layers {unknown}; the {args.dims}-D suite has {list(suite)}",
              file=sys.stderr)
        return 2
    torch: Any = None
    if "torch" in args.compare.split(","):
        try:
            torch = importlib.import_module("torch")
            torch.set_num_threads(args.threads)
        except ImportError:
            print("PyTorch is not installed: timing fastim2col alone", file=sys.stderr)
    dtype = np.dtype(args.dtype)
    fastim2col.set_num_threads(args.threads)
    headers = ["layer", "op", "ms", "GFLOP/s"] + (["torch ms", "ratio"] if torch else []) \
        + ([] if args.no_memory else ["peak MiB"])
    rows: list[list[str]] = []
    ratios: list[float] = []
    with _bench._limits(args.threads):
        for name in names:
            layer = suite[name]
            x, w, go = make_inputs(layer, args.batch, dtype)
            for op in args.ops.split(","):
                fns = {"ours": ours(fastim2col, layer, op, x, w, go)}
                if torch is not None:
                    fns["torch"] = theirs(torch, layer, op, x, w, go)
                    got, want = fns["ours"](), fns["torch"]().numpy()
                    scale = max(1.0, float(np.abs(want).max()))
                    tol = 1e-3 if dtype == np.float32 else 1e-9
                    if not np.allclose(got, want, rtol=tol, atol=tol * scale):
                        print(f"{name} {op}: results differ from PyTorch's", file=sys.stderr)
                        return 1
                per_round: dict = {}
                med = _bench.timed_blocks(fns, args.rounds, args.repeat, per_round=per_round)
                row = [name, op, f"{med['ours'] * 1e3:.2f}",
                       f"{layer.flops(args.batch) / med['ours'] / 1e9:.1f}"]
                if torch is not None:
                    ratio = float(np.median(_bench.round_ratios(per_round, "ours", ["torch"])))
                    ratios.append(ratio)
                    row += [f"{med['torch'] * 1e3:.2f}", f"{ratio:.2f}"]
                if not args.no_memory:
                    peak = _bench.peak_extra_mib(fns["ours"])
                    row.append("-" if peak is None else f"{peak:.1f}")
                rows.append(row)
                print(f"{name} {op}: {row[2]} ms", file=sys.stderr, flush=True)
    print(f"{args.dims}-D suite, {dtype.name}, batch {args.batch}, {args.threads} thread(s); "
          f"medians of {args.rounds} alternating rounds x {args.repeat} calls")
    _bench._print_table(headers, rows)
    if ratios:
        print(f"geometric mean of fastim2col / PyTorch: {_bench._geomean(ratios):.2f}")
    return 0
