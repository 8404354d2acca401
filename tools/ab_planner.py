"""A/B of a planner change: an earlier commit's Python side (every module of
fastim2col/) against the working tree's, in one process, on the same
compiled kernels. Timings alternate warmed-up blocks (fastim2col._bench
.timed_blocks), so the two sides see the same machine state; results are
checked to agree first.

    python -P tools/ab_planner.py --base HEAD~1 --op conv2d_weight \\
        --layers resnet_1x1_56,resnet_3x3_56 --dtype float32,float64 --batch 1,8

Only valid where the kernels' signatures did not change between the two
commits (the old Python code calls the current compiled modules).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import fastim2col
from fastim2col import _bench

ROOT = Path(__file__).resolve().parent.parent


def load_old(base: str, base_dir: str | None = None):
    """The base commit's Python side (every fastim2col/**/*.py; or the files
    under base_dir, a copy of such a fastim2col/ folder, where there is no
    git) as the package fastim2col_base, on the current compiled modules
    (linked in): {"functional": ..., "grad": ...}."""
    tmp = Path(tempfile.mkdtemp(prefix="ab_planner_")) / "fastim2col_base"
    if base_dir is not None:
        files = {p.relative_to(base_dir).as_posix(): p.read_text()
                 for p in Path(base_dir).rglob("*.py")}
    else:
        names = subprocess.run(["git", "ls-tree", "-r", "--name-only", base, "fastim2col/"],
                               cwd=ROOT, check=True, capture_output=True, text=True).stdout
        files = {}
        for name in names.split():
            if name.endswith(".py"):
                files[name[len("fastim2col/"):]] = subprocess.run(
                    ["git", "show", f"{base}:{name}"], cwd=ROOT, check=True,
                    capture_output=True, text=True).stdout
    for rel, text in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text)
    for compiled in Path(fastim2col.__file__).parent.glob("_*.so"):   # the same kernels
        (tmp / compiled.name).symlink_to(compiled)
    sys.path.insert(0, str(tmp.parent))
    import fastim2col_base.functional
    import fastim2col_base.grad
    return {"functional": fastim2col_base.functional, "grad": fastim2col_base.grad}


def call(op, side, x, w, go, layer, out, layout):
    s, p, g = layer.stride, layer.padding, layer.groups
    if op == "conv2d":
        return side["functional"].conv2d(x, w, None, s, p, 1, g, layout=layout, out=out)
    if op == "conv2d_input":
        return side["grad"].conv2d_input(x.shape, w, go, s, p, 1, g, layout=layout, out=out)
    return side["grad"].conv2d_weight(x, w.shape, go, s, p, 1, g, layout=layout, out=out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="HEAD")
    ap.add_argument("--base-dir", default=None,
                    help="a copy of an earlier fastim2col/ folder's Python files "
                         "(instead of --base)")
    ap.add_argument("--op", choices=["conv2d", "conv2d_input", "conv2d_weight"],
                    default="conv2d_weight")
    ap.add_argument("--layers", default="resnet_1x1_56")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", default="1")
    ap.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sides = {"old": load_old(args.base, args.base_dir),
             "new": {"functional": fastim2col.functional, "grad": fastim2col.grad}}
    fastim2col.set_num_threads(args.threads)
    print(f"{args.op}, {args.layout}, {args.threads} thread(s): old = "
          f"{args.base_dir or args.base}, new = working "
          f"tree; medians of {args.rounds} alternating rounds x {args.repeat} calls, ms")
    with _bench._limits(args.threads):
        for dt in args.dtype.split(","):
            for batch in (int(b) for b in args.batch.split(",")):
                for name in args.layers.split(","):
                    layer = _bench.LAYERS[name]
                    x, w = _bench.make_inputs(layer, batch, np.dtype(dt), args.layout)
                    y = fastim2col.conv2d(x, w, None, layer.stride, layer.padding, 1,
                                          layer.groups, layout=args.layout)
                    go = np.random.default_rng(2).standard_normal(y.shape).astype(dt)
                    result = {"conv2d": y, "conv2d_input": x, "conv2d_weight": w}[args.op]
                    outs = {k: np.empty_like(result) for k in sides}
                    fns = {k: (lambda k=k: call(args.op, sides[k], x, w, go, layer, outs[k],
                                                args.layout)) for k in sides}
                    got = {k: np.array(f(), copy=True) for k, f in fns.items()}
                    tol = 1e-3 if dt == "float32" else 1e-9
                    scale = max(1.0, float(np.abs(got["new"]).max()))
                    if not np.allclose(got["old"], got["new"], rtol=tol, atol=tol * scale):
                        print(f"{name} batch {batch} {dt}: old and new results differ")
                        return 1
                    t = _bench.timed_blocks(fns, rounds=args.rounds, repeat=args.repeat)
                    print(f"{dt:8s} b{batch:<3d} {name:18s} old {t['old'] * 1e3:8.2f}  new "
                          f"{t['new'] * 1e3:8.2f}  new/old {t['new'] / t['old']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
