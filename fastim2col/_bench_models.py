"""``python -m fastim2col bench --model NAME``: one training step's
convolutions of a whole network (fastim2col._models), layer by layer.

Each distinct layer shape runs forward (conv2d), input gradient
(grad.conv2d_input) and weight gradient (grad.conv2d_weight), timed by
``bench``'s protocol (alternating warmed-up blocks, medians) against the bare
BLAS GEMM of the same shape and, with ``--compare torch``, PyTorch. A layer's
time counts as often as the layer occurs; the model's first layer has no
input gradient (the image needs none). Totals are sums of those times, so
their ratios weigh each layer by its share of the step, as training does.
"""
from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

from . import _bench, _models

OPS = ("forward", "input", "weight")
_BENCH_OP = {"forward": "conv2d", "input": "conv2d_input", "weight": "conv2d_weight"}
# the implementations summed per op: ours, the bare GEMM, and a peer
_SIDES = ("ours", "gemm", "torch")


def _label(d: _models.DistinctLayer) -> str:
    return d.names[0] + (f" +{len(d.names) - 1}" if len(d.names) > 1 else "")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def run(args) -> int:
    """The --model run of `bench`, from bench_parser()'s parsed arguments."""
    fastim2col, threads, _, batches, dtype = _bench._setup(args)
    layers = _models.distinct_layers(args.model)
    if args.layers_limit is not None:
        if args.layers_limit < 1:
            print("--layers-limit takes a count of layers, 1 or more", file=sys.stderr)
            return 2
        layers = layers[:args.layers_limit]
    torch: Any = None
    if "torch" in args.compare.split(","):
        try:
            import torch as _torch
            torch = _torch
            torch.set_num_threads(threads)
        except ImportError:
            print("note: torch is not installed; skipping the torch comparison")
    if "numpy" in args.compare.split(","):
        print("note: --model compares with torch only; skipping numpy")
    peers = ["torch"] if torch is not None else []
    occurrences = sum(d.occurrences for d in layers)
    print(f"fastim2col {fastim2col.__version__} {args.model}: {occurrences} convs, "
          f"{len(layers)} distinct, forward + input + weight gradient, {dtype.name}, "
          f"{args.layout}, {threads} thread(s), medians of {args.rounds} alternating rounds "
          f"x {args.repeat} calls" + (f"; torch {torch.__version__}" if torch else ""),
          flush=True)
    busy = [w for w in [_bench._load_warning(threads)] if w]
    spread_layers = []
    headers = ["layer", "batch", "op", "count", "ms", "x count", "/gemm"] + \
        [f"/{p}" for p in peers]
    table = _bench._RowPrinter(headers, max(len(_label(d)) for d in layers), width=7)
    # totals[batch][op][side]: seconds of one step; flops[batch][op]
    totals = {b: {op: dict.fromkeys(_SIDES, 0.0) for op in OPS} for b in batches}
    flops = {b: dict.fromkeys(OPS, 0.0) for b in batches}
    with _bench._limits(threads):
        for batch in batches:
            for d in layers:
                layer = _bench.Layer(_label(d), *d.layer.shape_key())
                for op in OPS:
                    count = d.input_occurrences if op == "input" else d.occurrences
                    if count == 0:
                        continue
                    spec = SimpleNamespace(op=_BENCH_OP[op], layout=args.layout)
                    fns, _ = _bench._bench_fns(fastim2col, torch, layer, batch, dtype, spec,
                                               peers)
                    per_round: dict = {}
                    t = _bench.timed_blocks(fns, args.rounds, args.repeat, per_round=per_round)
                    t["gemm"] = min(t.pop("gemm_ab"), t.pop("gemm_ba"))
                    if args.rounds > 1 and _bench._spread(per_round["ours"]) > _bench.BUSY_SPREAD:
                        spread_layers.append(f"{layer.name} {op} (batch {batch}): "
                                             f"{_bench._spread(per_round['ours']):.2f}x")
                    for side in _SIDES:
                        if side in t:
                            totals[batch][op][side] += t[side] * count
                    flops[batch][op] += layer.flops(batch) * count
                    table.add([layer.name, batch, op, count, f"{t['ours'] * 1e3:.2f}",
                               f"{t['ours'] * count * 1e3:.2f}", _ratio(t["ours"], t["gemm"])]
                              + [_ratio(t["ours"], t[p]) for p in peers])
        if spread_layers:
            busy.append("the rounds' own medians differ by more than "
                        f"{_bench.BUSY_SPREAD:.2f}x on: " + ", ".join(spread_layers))
    print()
    print(f"{args.model}, one training step's convolutions: times x count, summed; ratios "
          "fastim2col / other\n(< 1: fastim2col is faster), of those sums:")
    rows = []
    for batch in batches:
        step = {side: sum(totals[batch][op][side] for op in OPS) for side in _SIDES}
        for op, sums in [*((op, totals[batch][op]) for op in OPS), ("step", step)]:
            fl = sum(flops[batch].values()) if op == "step" else flops[batch][op]
            if not sums["ours"]:       # no such call: the input gradient of the stem alone
                rows.append([op, batch] + ["-"] * (5 + 2 * len(peers)))
                continue
            rows.append([op, batch, f"{sums['ours'] * 1e3:.1f}",
                         f"{100 * sums['ours'] / step['ours']:.0f}%",
                         f"{fl / sums['ours'] / 1e9:.1f}", f"{sums['gemm'] * 1e3:.1f}",
                         _ratio(sums["ours"], sums["gemm"])]
                        + [x for p in peers for x in (f"{sums[p] * 1e3:.1f}",
                                                      _ratio(sums["ours"], sums[p]))])
    _bench._print_table(["total", "batch", "ms", "share", "GFLOP/s", "gemm ms", "/gemm"]
                        + [x for p in peers for x in (f"{p} ms", f"/{p}")], rows)
    if args.layers_limit is not None:
        print(f"(only the first {len(layers)} distinct layers: --layers-limit)")
    _bench._report_busy(busy)
    return 0
