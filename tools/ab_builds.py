"""A/B of two builds of fastim2col, side by side in one process.

The other build is a copy of its built ``fastim2col/`` folder (compiled
modules included) under another package name, e.g. made from a worktree of
an older commit:

    git worktree add /tmp/ab/old 8624aa1
    (cd /tmp/ab/old && cp <checkout>/setup.py . && cp <checkout>/src/extensions.txt \\
        <checkout>/src/_build_flags.py.in src/ && python setup.py build_ext --inplace)
    cp -r /tmp/ab/old/fastim2col /tmp/ab/pkgs/fastim2col_old
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python tools/ab_builds.py \\
        --other /tmp/ab/pkgs --name fastim2col_old --ops conv2d,im2col --batch 1

(the current setup.py gives both builds the same flags). Each case is timed
in alternating warmed-up blocks (fastim2col._bench.timed_blocks) and the
per-round ratios' median reported; results are checked to agree first. The
working tree's build is imported first: the other build's compiled modules
name their package ``fastim2col`` when they initialise.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def call(mod, op, layer, x, w, go, layout, cols=None):
    s, p, g = layer.stride, layer.padding, layer.groups
    if op == "conv2d":
        return lambda: mod.conv2d(x, w, None, s, p, 1, g, layout=layout)
    if op == "conv2d_input":
        return lambda: mod.grad.conv2d_input(x.shape, w, go, s, p, 1, g, layout=layout)
    if op == "conv2d_weight":
        return lambda: mod.grad.conv2d_weight(x, w.shape, go, s, p, 1, g, layout=layout)
    if op == "im2col":
        return lambda: mod.im2col(x, layer.kernel, s, p, layout=layout)
    hw = x.shape[1:3] if layout == "NHWC" else x.shape[2:]
    return lambda: mod.col2im(cols, hw, layer.kernel, s, p, layout=layout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--other", required=True, help="the folder holding the other package")
    ap.add_argument("--name", default="fastim2col_old", help="its package name")
    ap.add_argument("--ops", default="im2col,col2im,conv2d,conv2d_input,conv2d_weight")
    ap.add_argument("--layers", default=None, help="default: the main suite")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import fastim2col as new
    from fastim2col import _bench
    sys.path.insert(0, args.other)
    old = importlib.import_module(args.name)
    layers = args.layers.split(",") if args.layers else _bench.MAIN_SUITE
    results = []
    for op in args.ops.split(","):
        for dtype in (np.float32, np.float64):
            for layout in ("NCHW", "NHWC"):
                for name in layers:
                    layer = _bench.LAYERS[name]
                    x, w = _bench.make_inputs(layer, args.batch, np.dtype(dtype), layout)
                    y = new.conv2d(x, w, None, layer.stride, layer.padding, 1, layer.groups,
                                   layout=layout)
                    go = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
                    cols = new.im2col(x, layer.kernel, layer.stride, layer.padding,
                                      layout=layout)
                    f_old = call(old, op, layer, x, w, go, layout, cols)
                    f_new = call(new, op, layer, x, w, go, layout, cols)
                    np.testing.assert_allclose(f_old(), f_new(), rtol=1e-4, atol=1e-4)
                    per_round: dict = {}
                    med = _bench.timed_blocks({"old": f_old, "new": f_new}, args.rounds, 5,
                                              per_round=per_round)
                    ratio = float(np.median(_bench.round_ratios(per_round, "new", ["old"])))
                    row = dict(op=op, dtype=np.dtype(dtype).name, layout=layout, layer=name,
                               old_ms=med["old"] * 1e3, new_ms=med["new"] * 1e3, ratio=ratio)
                    results.append(row)
                    print(f"{op:14s} {row['dtype']:8s} {layout} {name:18s} old "
                          f"{row['old_ms']:8.3f} new {row['new_ms']:8.3f} ms  {ratio:.3f}",
                          flush=True)
    ratios = np.array([r["ratio"] for r in results])
    print(f"{len(ratios)} cases: geometric mean new/old {np.exp(np.log(ratios).mean()):.3f}, "
          f"worst {ratios.max():.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
