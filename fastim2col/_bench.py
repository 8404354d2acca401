"""``python -m fastim2col``: the main job, and ``python -m fastim2col bench``.

The main job runs a default layer suite (ResNet-50-like 3x3 and 1x1 layers and
the 7x7 stride-2 stem) through conv2d, checks each result against a NumPy
im2col (sliding_window_view) + matmul baseline and times both.

``bench`` compares against the bare BLAS GEMM of the same shape and, with
``--compare``, against PyTorch (if installed) and the NumPy baseline, printing
time, GFLOP/s, ratios, extra peak memory and geometric means.

Timing protocol: each implementation runs in blocks (warm-up calls, then timed
calls), blocks of different implementations alternate over several rounds and
the median of all timed calls is reported. OpenMP and BLAS worker threads keep
spinning after a parallel region, so interleaving two libraries call by call
would measure their interference rather than their speed.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class Layer(NamedTuple):
    name: str
    c_in: int
    c_out: int
    size: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1

    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    def flops(self, batch: int) -> float:
        k = self.c_in // self.groups * self.kernel * self.kernel
        return 2.0 * batch * self.c_out * self.out_size() ** 2 * k


# ResNet-50's convolutions, a VGG layer, ResNeXt's grouped and MobileNetV2's
# depthwise 3x3.
LAYERS = {
    "resnet_stem_7x7s2": Layer("resnet_stem_7x7s2", 3, 64, 224, 7, 2, 3),
    "resnet_3x3_56": Layer("resnet_3x3_56", 64, 64, 56, 3, 1, 1),
    "resnet_3x3_28": Layer("resnet_3x3_28", 128, 128, 28, 3, 1, 1),
    "resnet_3x3_14": Layer("resnet_3x3_14", 256, 256, 14, 3, 1, 1),
    "resnet_3x3_7": Layer("resnet_3x3_7", 512, 512, 7, 3, 1, 1),
    "resnet_1x1_56": Layer("resnet_1x1_56", 64, 256, 56, 1),
    "vgg_3x3_224": Layer("vgg_3x3_224", 64, 64, 224, 3, 1, 1),
    "resnext_g32_56": Layer("resnext_g32_56", 128, 128, 56, 3, 1, 1, 32),
    "mobilenet_dw_56": Layer("mobilenet_dw_56", 144, 144, 56, 3, 1, 1, 144),
}
MAIN_SUITE = ["resnet_stem_7x7s2", "resnet_3x3_56", "resnet_3x3_28", "resnet_3x3_14",
              "resnet_3x3_7", "resnet_1x1_56"]


def make_inputs(layer: Layer, batch: int, dtype, layout: str = "NCHW", seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, layer.c_in, layer.size, layer.size)).astype(dtype)
    w = rng.standard_normal((layer.c_out, layer.c_in // layer.groups, layer.kernel,
                             layer.kernel)).astype(dtype)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        w = np.ascontiguousarray(w.transpose(0, 2, 3, 1))
    return x, w


def numpy_conv2d(x, w, stride, padding, groups):
    """The textbook NumPy baseline: sliding_window_view unroll, copied
    contiguous, then one matmul per group. NCHW only."""
    n, c, _, _ = x.shape
    c_out, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    ho, wo = win.shape[2:4]
    og = c_out // groups
    out = np.empty((n, c_out, ho, wo), dtype=x.dtype)
    for g in range(groups):
        cols = np.ascontiguousarray(
            win[:, g * cg:(g + 1) * cg].transpose(1, 4, 5, 0, 2, 3)).reshape(cg * kh * kw, -1)
        res = w[g * og:(g + 1) * og].reshape(og, -1) @ cols
        out[:, g * og:(g + 1) * og] = res.reshape(og, n, ho, wo).transpose(1, 0, 2, 3)
    return out


def bare_gemm(layer: Layer, batch: int, dtype, op: str = "conv2d") -> dict:
    """The BLAS GEMM an op reduces to (once per group), with SciPy's BLAS,
    operands prepared in Fortran order so no call copies. With K_g = C/groups
    * kh * kw and P = N*Ho*Wo output positions, the shapes (m x k by k x n):
    conv2d (C_out/groups x K_g) by (K_g x P); conv2d_input (K_g x C_out/groups)
    by (C_out/groups x P); conv2d_weight (C_out/groups x P) by (P x K_g).
    Both orientations (C = A B and C^T = B^T A^T) are returned: their speeds
    differ, and the faster one is the baseline."""
    from scipy.linalg import blas
    gemm = blas.sgemm if np.dtype(dtype) == np.float32 else blas.dgemm
    kg = layer.c_in // layer.groups * layer.kernel ** 2
    cols = batch * layer.out_size() ** 2
    og = layer.c_out // layer.groups
    m, k, n = {"conv2d": (og, kg, cols), "conv2d_input": (kg, og, cols),
               "conv2d_weight": (og, cols, kg)}[op]
    rng = np.random.default_rng(1)
    a = np.asfortranarray(rng.standard_normal((m, k)).astype(dtype))
    b = np.asfortranarray(rng.standard_normal((k, n)).astype(dtype))
    c = np.asfortranarray(np.empty((m, n), dtype=dtype))
    at, bt, ct = (np.asfortranarray(m.T) for m in (a, b, c))

    def ab():
        for _ in range(layer.groups):
            gemm(1.0, a, b, 0.0, c, overwrite_c=True)

    def ba():
        for _ in range(layer.groups):
            gemm(1.0, bt, at, 0.0, ct, overwrite_c=True)
    return {"gemm_ab": ab, "gemm_ba": ba}


def _malloc_for_peaks() -> None:
    """Make glibc return freed buffers to the OS and never raise its mmap
    threshold: else a buffer freed by an earlier call stays resident and the
    next call's peak does not show it."""
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 64 * 1024)   # M_MMAP_THRESHOLD: fixed at 64 KiB
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_extra_mib(fn: Callable[[], object]) -> float | None:
    """Extra resident memory (MiB) one call adds at its peak, over what the
    process held before it (inputs and outputs allocated and touched).
    Linux only: resets the high-water mark through /proc/self/clear_refs."""
    _malloc_for_peaks()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
        return 0
    before = status("VmRSS:")
    fn()
    return max(0, status("VmHWM:") - before) / 1024


# OpenBLAS worker threads spin for about 2**28 cycles (~0.1 s) after a call
# before they sleep, and OpenMP pools spin too: a block that starts right
# after another library's block would share the cores with those spinners.
COOLDOWN_S = 0.25
# After the cool-down a block's calls run slow for a while (this 2-core VM:
# back-to-back calls of the 1x1 layer's input gradient at batch 8 took 8.7 ms
# first, 4.5 ms after 100 ms and 4.3 after 200 ms; its bare GEMM 5.6 -> 3.6
# ms within 40 ms; the stem's 15 -> 12 ms over 180 ms): a block warms up for
# at least this long, so that both sides are timed in their steady state, as
# in a training loop, not in the ramp after idling.
WARMUP_S = 0.2


def timed_blocks(fns: dict, rounds: int, repeat: int, warmup: int = 2,
                 warmup_s: float | None = None, per_round: dict | None = None) -> dict:
    """Median seconds per call of each function, alternating blocks separated
    by a cool-down, each warmed up by at least `warmup` calls and `warmup_s`
    seconds (default WARMUP_S). per_round, if given, receives each
    function's block medians, one per round, in order."""
    warmup_s = WARMUP_S if warmup_s is None else warmup_s
    times: dict = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(COOLDOWN_S)
            start, calls = time.perf_counter(), 0
            while calls < warmup or time.perf_counter() - start < warmup_s:
                fn()
                calls += 1
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    if per_round is not None:
        for name, v in times.items():
            per_round[name] = [statistics.median(v[r * repeat:(r + 1) * repeat])
                               for r in range(rounds)]
    return {name: statistics.median(v) for name, v in times.items()}


def round_ratios(per_round: dict, name: str, others: list[str]) -> list[float]:
    """name's time over the fastest of `others`, round by round (block
    medians timed seconds apart, so a slow stretch of a shared machine shows
    in the spread of these instead of in one side only)."""
    return [mine / min(per_round[o][r] for o in others)
            for r, mine in enumerate(per_round[name])]


def _geomean(values):
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def _limits(threads: int):
    from threadpoolctl import ThreadpoolController
    import scipy.linalg.cython_blas  # noqa: F401  (load SciPy's BLAS)
    return ThreadpoolController().limit(limits=threads, user_api="blas")


def _print_table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(str(h).rjust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(r, widths)))


STABLE_TIPS = ("for stable numbers: close other programs (or wait for them), use --threads "
               "no more than the idle cores, raise --rounds, and with other work sharing "
               "the cores set OMP_WAIT_POLICY=passive")

# A layer whose rounds' block medians differ by more than this factor was
# timed while the machine's speed moved (another program, frequency scaling).
BUSY_SPREAD = 1.25


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks (the subcommand list) and wraps option help."""


def _wrap(text: str) -> str:
    import textwrap
    return "\n".join(textwrap.fill(part, 79) for part in text.split("\n\n"))


def _common_args(p: argparse.ArgumentParser, default_layers, layers_default_help: str):
    p.add_argument("--threads", type=int, default=None,
                   help="threads for fastim2col and every peer (default: fastim2col's "
                        "default, i.e. OMP_NUM_THREADS, else the usable cores)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="element type of inputs, weights and results (default: %(default)s)")
    p.add_argument("--batch", default="1",
                   help="batch size(s), comma separated, e.g. 1,8 (default: %(default)s)")
    p.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW",
                   help="memory layout of the arrays (default: %(default)s)")
    p.add_argument("--layers", default=",".join(default_layers),
                   help=f"comma-separated layer names from: {', '.join(LAYERS)} "
                        f"(default: {layers_default_help})")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds of timed blocks; more rounds, steadier medians "
                        "(default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3,
                   help="timed calls per block (default: %(default)s)")


class _RowPrinter:
    """Prints a table's header at once and each row as it is added, with
    column widths fixed up front (from the headers and the longest layer
    name), so that a long run shows its progress."""

    def __init__(self, headers, first_width: int, width: int = 8):
        self.widths = [max(len(headers[0]), first_width)] + [max(len(h), width)
                                                             for h in headers[1:]]
        self._line(headers)
        print("  ".join("-" * w for w in self.widths), flush=True)

    def _line(self, row):
        print("  ".join(str(v).rjust(w) for v, w in zip(row, self.widths)), flush=True)

    def add(self, row):
        self._line(row)


def _spread(values) -> float:
    """The most over the least of a function's per-round block medians."""
    return max(values) / min(values) if values and min(values) > 0 else 1.0


def _load_warning(threads: int) -> str | None:
    """A warning when the 1-minute load average (other programs: this one
    has not started timing yet) leaves fewer idle cores than threads."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
    cores = os.cpu_count() or 1
    if load > cores - threads + 0.5:
        return (f"the 1-minute load average is {load:.1f} on {cores} core(s) before the run: "
                f"other programs are using the cores that {threads} thread(s) need")
    return None


def _threads_probe(fastim2col, layers, batch, dtype, layout, threads, restore) -> str | None:
    """Time the suite's cheapest layer on 1 thread and on `threads`: when
    more threads are not faster, other work holds the cores. Returns the
    warning, or None. `restore` is what set_num_threads gets afterwards."""
    if threads < 2 or not layers:
        return None
    layer = min(layers, key=lambda lay: lay.flops(1))
    x, w = make_inputs(layer, batch, dtype, layout)

    def call():
        fastim2col.conv2d(x, w, None, layer.stride, layer.padding, 1, layer.groups, layout=layout)

    def on(n):
        def fn():
            fastim2col.set_num_threads(n)
            call()
        return fn
    try:
        t = timed_blocks({"1": on(1), "n": on(threads)}, 2, 3, warmup_s=0.05)
    finally:
        fastim2col.set_num_threads(restore)
    if t["n"] >= 0.95 * t["1"]:
        return (f"{threads} threads were no faster than 1 on {layer.name} "
                f"({t['n'] * 1e3:.2f} ms vs {t['1'] * 1e3:.2f} ms): other work is "
                f"using the cores")
    return None


def _report_busy(warnings: list[str]) -> None:
    if not warnings:
        return
    import textwrap
    print("warning: the machine looks busy; these timings may be off:")
    for w in warnings:
        print(textwrap.fill(w, 79, initial_indent="  - ", subsequent_indent="    "))
    print(textwrap.fill(STABLE_TIPS, 79, initial_indent="  ", subsequent_indent="  "))


def _setup(args):
    import fastim2col
    if args.threads is not None:
        fastim2col.set_num_threads(args.threads)
    threads = fastim2col.get_num_threads()
    layers = [LAYERS[name] for name in args.layers.split(",") if name]
    batches = [int(b) for b in str(args.batch).split(",")]
    return fastim2col, threads, layers, batches, np.dtype(args.dtype)


SUBCOMMANDS = """subcommands:
  (none)   the layer suite: conv2d on ResNet-50-like layers, each result checked
           against a NumPy im2col + matmul baseline, both timed (the options above)
  bench    fastim2col against the bare BLAS GEMM of each layer and, with --compare,
           PyTorch and NumPy, for conv2d, its gradients, im2col or col2im; with
           --model resnet18|resnet50|mobilenet_v2|unet, a whole network's training
           step: python -m fastim2col bench --help
  bench-nd the 1-D (signals) or 3-D (volumes) layer suite, forward and gradients,
           with --compare torch against PyTorch: python -m fastim2col bench-nd --help

Timing: alternating warmed-up blocks, medians of all timed calls. A warning
follows the table when the machine looked busy (a wide spread between rounds,
a high load average, more threads no faster than one)."""


def main_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastim2col",
        usage="python -m fastim2col [bench | bench-nd] [options]",
        description=_wrap("Run the default layer suite through fastim2col.conv2d, check "
                          "every result against a NumPy im2col + matmul baseline and time "
                          "both, printing each layer's row as it finishes."),
        epilog=SUBCOMMANDS + "\n\n" + _wrap(STABLE_TIPS[0].upper() + STABLE_TIPS[1:] + "."),
        formatter_class=_HelpFormatter)
    _common_args(p, MAIN_SUITE, "the ResNet-50 stem, 3x3 and 1x1 layers: "
                                + ", ".join(MAIN_SUITE))
    return p


def run_main(argv=None) -> int:
    args = main_parser().parse_args(argv)
    fastim2col, threads, layers, batches, dtype = _setup(args)
    print(f"fastim2col {fastim2col.__version__}: conv2d, {dtype.name}, {args.layout}, "
          f"{threads} thread(s); baseline: NumPy sliding_window_view + matmul", flush=True)
    busy = [w for w in [_load_warning(threads)] if w]
    failures = 0
    spread_layers = []
    tol = 1e-3 if dtype == np.float32 else 1e-10
    table = _RowPrinter(["layer", "batch", "ms", "GFLOP/s", "numpy ms", "speedup", "rel err",
                         "check"], max((len(lay.name) for lay in layers), default=5))
    with _limits(threads):
        for batch in batches:
            for layer in layers:
                x, w = make_inputs(layer, batch, dtype, args.layout)
                x_nchw = x if args.layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
                w_nchw = w if args.layout == "NCHW" else np.ascontiguousarray(w.transpose(0, 3, 1, 2))

                def ours():
                    return fastim2col.conv2d(x, w, None, layer.stride, layer.padding, 1,
                                             layer.groups, layout=args.layout)

                def base():
                    return numpy_conv2d(x_nchw, w_nchw, layer.stride, layer.padding, layer.groups)
                got, want = ours(), base()
                if args.layout == "NHWC":
                    got = got.transpose(0, 3, 1, 2)
                err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
                ok = err < tol
                failures += not ok
                per_round: dict = {}
                t = timed_blocks({"ours": ours, "numpy": base}, args.rounds, args.repeat,
                                 per_round=per_round)
                if args.rounds > 1 and _spread(per_round["ours"]) > BUSY_SPREAD:
                    spread_layers.append(f"{layer.name} (batch {batch}): "
                                         f"{_spread(per_round['ours']):.2f}x")
                gf = layer.flops(batch) / 1e9
                table.add([layer.name, batch, f"{t['ours'] * 1e3:.2f}", f"{gf / t['ours']:.1f}",
                           f"{t['numpy'] * 1e3:.2f}", f"{t['numpy'] / t['ours']:.1f}x",
                           f"{err:.1e}", "ok" if ok else "MISMATCH"])
        if spread_layers:
            busy.append("the rounds' own medians differ by more than "
                        f"{BUSY_SPREAD:.2f}x on: " + ", ".join(spread_layers))
        probe = _threads_probe(fastim2col, layers, batches[0], dtype, args.layout, threads,
                               args.threads)
        if probe:
            busy.append(probe)
    _report_busy(busy)
    return 1 if failures else 0


def bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastim2col bench",
        description=_wrap("Time fastim2col against the bare BLAS GEMM of each layer and, "
                          "with --compare, against PyTorch and a NumPy im2col baseline. A "
                          "progress line (stderr) follows each layer; the table, with peak "
                          "memory, comes at the end."),
        epilog=_wrap(STABLE_TIPS[0].upper() + STABLE_TIPS[1:] + "."),
        formatter_class=_HelpFormatter)
    _common_args(p, list(LAYERS), "all of them")
    p.add_argument("--op", choices=["conv2d", "conv2d_input", "conv2d_weight", "im2col",
                                    "col2im"], default="conv2d",
                   help="the operation timed: conv2d, its input or weight gradient, or the "
                        "im2col/col2im copies (default: %(default)s)")
    p.add_argument("--compare", default="",
                   help="peers, comma separated from torch,numpy (default: none, only the "
                        "bare GEMM)")
    from ._models import MODELS
    p.add_argument("--model", choices=list(MODELS), default=None,
                   help="time one training step's convolutions of a whole network instead "
                        "(every distinct layer forward, input and weight gradient, and "
                        "totals; --layers and --op do not apply; --compare takes torch) "
                        "(default: none, the layer suite)")
    p.add_argument("--layers-limit", type=int, default=None, metavar="K",
                   help="with --model, only the model's first K distinct layers, for a quick "
                        "check (default: all)")
    return p


def run_bench(argv=None) -> int:
    args = bench_parser().parse_args(argv)
    if args.model is not None:
        from . import _bench_models
        return _bench_models.run(args)
    fastim2col, threads, layers, batches, dtype = _setup(args)
    peers = [s for s in args.compare.split(",") if s]
    torch: Any = None
    if "torch" in peers:
        try:
            import torch as _torch
            torch = _torch
            torch.set_num_threads(threads)
        except ImportError:
            print("note: torch is not installed; skipping the torch comparison")
            peers.remove("torch")
    print(f"fastim2col {fastim2col.__version__} {args.op}: {dtype.name}, {args.layout}, "
          f"{threads} thread(s), medians of {args.rounds} alternating rounds x {args.repeat} "
          f"calls" + (f"; torch {torch.__version__}" if torch is not None else ""),
          flush=True)
    busy = [w for w in [_load_warning(threads)] if w]
    spread_layers = []
    n_cases, done = len(batches) * len(layers), 0
    copy_op = args.op in ("im2col", "col2im")
    headers = ["layer", "batch", "ms", "GB/s" if copy_op else "GFLOP/s", "/gemm",
               "rounds"] + [f"/{p}" for p in peers] + ["extra MiB"] + [f"{p} MiB" for p in peers]
    rows = []
    ratios: dict[str, list[float]] = {k: [] for k in ["gemm"] + peers}
    cases = []
    with _limits(threads):
        for batch in batches:
            for layer in layers:
                fns, out_bytes = _bench_fns(fastim2col, torch, layer, batch, dtype, args, peers)
                per_round: dict = {}
                t = timed_blocks(fns, args.rounds, args.repeat, per_round=per_round)
                spread = "-"
                if "gemm_ab" in t:
                    t["gemm"] = min(t.pop("gemm_ab"), t.pop("gemm_ba"))
                    by_round = round_ratios(per_round, "ours", ["gemm_ab", "gemm_ba"])
                    spread = f"{min(by_round):.2f}-{max(by_round):.2f}"
                if args.rounds > 1 and _spread(per_round["ours"]) > BUSY_SPREAD:
                    spread_layers.append(f"{layer.name} (batch {batch}): "
                                         f"{_spread(per_round['ours']):.2f}x")
                # im2col/col2im: GB of output written per second; else GFLOP/s
                work = (out_bytes if copy_op else layer.flops(batch)) / 1e9
                row = [layer.name, batch, f"{t['ours'] * 1e3:.2f}", f"{work / t['ours']:.1f}"]
                for k in ["gemm"] + peers:
                    if k in t:
                        r = t["ours"] / t[k]
                        if k != "gemm" or layer.groups == 1:
                            ratios[k].append(r)
                        row.append(f"{r:.2f}")
                    else:
                        row.append("-")
                    if k == "gemm":
                        row.append(spread)
                rows.append(row)
                cases.append((fns, out_bytes))
                done += 1
                # the table waits for the peak-memory pass: say how far the run is
                print(f"[{done}/{n_cases}] {layer.name} batch {batch}: {row[2]} ms, "
                      f"{row[3]} {headers[3]}"
                      + (f", {row[4]}x gemm" if row[4] != "-" else ""),
                      file=sys.stderr, flush=True)
        # Peak memory last: measuring it changes malloc's settings for the rest
        # of the process (see _malloc_for_peaks), which would slow later timings.
        for row, (fns, out_bytes) in zip(rows, cases):
            mem = {k: peak_extra_mib(fn) for k, fn in fns.items() if not k.startswith("gemm")}
            row.append(f"{mem['ours']:.1f}" if mem["ours"] is not None else "n/a")
            for k in peers:
                m = mem.get(k)
                # peers allocate their result inside the call: count only the extra
                row.append(f"{max(0.0, m - out_bytes / 2**20):.1f}" if m is not None else "n/a")
        if spread_layers:
            busy.append("the rounds' own medians differ by more than "
                        f"{BUSY_SPREAD:.2f}x on: " + ", ".join(spread_layers))
        if args.op == "conv2d":
            probe = _threads_probe(fastim2col, layers, batches[0], dtype, args.layout,
                                   threads, args.threads)
            if probe:
                busy.append(probe)
    _print_table(headers, rows)
    if any(r[headers.index("rounds")] != "-" for r in rows):
        print("rounds: the least and the most of the rounds' own ratios to the GEMM (each "
              "round's block medians)")
    print("time ratios (fastim2col / other; < 1 means fastim2col is faster), geometric means:")
    for k, v in ratios.items():
        if not v:
            continue
        note = " (groups=1 layers)" if k == "gemm" else ""
        print(f"  vs {k}{note}: {_geomean(v):.3f}   worst {max(v) if v else float('nan'):.3f}")
    _report_busy(busy)
    return 0


def _bench_fns(fastim2col, torch, layer, batch, dtype, args, peers):
    """{'ours': ..., 'gemm': ..., peer: ...} callables for one layer and op,
    and the byte size of the result (peers allocate theirs inside the call)."""
    x, w = make_inputs(layer, batch, dtype, args.layout)
    s, p, g, op, layout = layer.stride, layer.padding, layer.groups, args.op, args.layout
    y = fastim2col.conv2d(x, w, None, s, p, 1, g, layout=layout)
    go = np.random.default_rng(2).standard_normal(y.shape).astype(dtype)
    fns = {}
    if op == "conv2d":
        out = np.empty_like(y)
        fns["ours"] = lambda: fastim2col.conv2d(x, w, None, s, p, 1, g, layout=layout, out=out)
        result_bytes = y.nbytes
    elif op == "conv2d_input":
        out = np.empty_like(x)
        fns["ours"] = lambda: fastim2col.grad.conv2d_input(x.shape, w, go, s, p, 1, g,
                                                           layout=layout, out=out)
        result_bytes = x.nbytes
    elif op == "conv2d_weight":
        out = np.empty_like(w)
        fns["ours"] = lambda: fastim2col.grad.conv2d_weight(x, w.shape, go, s, p, 1, g,
                                                            layout=layout, out=out)
        result_bytes = w.nbytes
    elif op == "im2col":
        cols = fastim2col.im2col(x, layer.kernel, s, p, layout=layout)
        out = np.empty_like(cols)
        fns["ours"] = lambda: fastim2col.im2col(x, layer.kernel, s, p, layout=layout, out=out)
        result_bytes = cols.nbytes
    else:  # col2im
        cols = fastim2col.im2col(x, layer.kernel, s, p, layout=layout)
        out = np.empty_like(x)
        hw = (layer.size, layer.size)
        fns["ours"] = lambda: fastim2col.col2im(cols, hw, layer.kernel, s, p, layout=layout,
                                                out=out)
        result_bytes = x.nbytes
    if op.startswith("conv2d"):
        fns.update(bare_gemm(layer, batch, dtype, op))
    x_nchw = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    w_nchw = w if layout == "NCHW" else np.ascontiguousarray(w.transpose(0, 3, 1, 2))
    if "torch" in peers:
        fns["torch"] = _torch_fn(torch, op, layer, x_nchw, w_nchw, go, layout)
    if "numpy" in peers:
        fn = _numpy_fn(op, layer, x_nchw, w_nchw)
        if fn is not None:
            fns["numpy"] = fn
    return fns, result_bytes


def _torch_fn(torch, op, layer, x, w, go, layout):
    F = torch.nn.functional
    s, p, g = layer.stride, layer.padding, layer.groups
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    if layout == "NHWC":
        tx = tx.contiguous(memory_format=torch.channels_last)
    tgo = torch.from_numpy(np.ascontiguousarray(go if layout == "NCHW" else go.transpose(0, 3, 1, 2)))
    if op == "conv2d":
        return lambda: F.conv2d(tx, tw, None, s, p, 1, g)
    if op == "conv2d_input":
        return lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tgo, s, p, 1, g)
    if op == "conv2d_weight":
        return lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tgo, s, p, 1, g)
    if op == "im2col":
        return lambda: F.unfold(tx, layer.kernel, 1, p, s)
    cols = F.unfold(tx, layer.kernel, 1, p, s)
    return lambda: F.fold(cols, (layer.size, layer.size), layer.kernel, 1, p, s)


def _numpy_fn(op, layer, x, w):
    s, p, g = layer.stride, layer.padding, layer.groups
    if op == "conv2d":
        return lambda: numpy_conv2d(x, w, s, p, g)
    if op == "im2col":
        def unroll():
            xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
            win = sliding_window_view(xp, (layer.kernel,) * 2, axis=(2, 3))[:, :, ::s, ::s]
            return np.ascontiguousarray(win.transpose(0, 1, 4, 5, 2, 3))
        return unroll
    return None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return run_bench(argv[1:])
    if argv and argv[0] == "bench-nd":
        from . import _bench_nd
        return _bench_nd.run(argv[1:])
    if argv and argv[0] == "help":       # `python -m fastim2col help [bench | bench-nd]`
        if argv[1:2] == ["bench-nd"]:
            from . import _bench_nd
            _bench_nd.parser().print_help()
        else:
            (bench_parser() if argv[1:2] == ["bench"] else main_parser()).print_help()
        return 0
    return run_main(argv)
