#!/usr/bin/env python3
"""Plot conv2d GFLOP/s per layer: fastim2col, a NumPy im2col + matmul baseline
and PyTorch (when installed), from one benchmark run, into a PNG.

Where the numbers come from (first match wins):

  --from-json FILE   a JSON written earlier by this script (--save-json);
  --asv-results X    an asv results file of one commit: a path to
                     results/<machine>/<hash>-<env>.json, a commit hash
                     (prefix) to look up under asv_bench/results/, or
                     "latest" for the newest results file there. The series
                     are the track_ benchmarks of bench_conv2d.py:
                       fastim2col  Conv2dGFlops.track_gflops
                       numpy       NumpyConv2dGFlops.track_gflops_numpy
                       torch       TorchConv2dGFlops.track_gflops_torch
                     (the last is n/a in asv's own environments, which do
                     not install PyTorch);
  neither            everything is measured by this script.

Any number still missing (PyTorch from an asv run, VGG at batch 8, which the
asv track_ benchmarks skip) is measured by this script in the current Python
unless --no-measure is given, with the same timer as the asv track_
benchmarks (asv_bench/benchmarks/common.py: one warm-up call, then at least
3 calls and 0.2 s, median). The kernels' threads are pinned per panel:
fastim2col.set_num_threads(n), NumPy's BLAS with threadpoolctl,
torch.set_num_threads(n). Bars measured by this script, not by asv, are
hatched. PyTorch is optional: without it that series is left out.

Example (the README's figure):

    python asv_bench/plot_results.py --asv-results latest --batch 8 --threads 1 2 \\
        --save-json asv_bench/gflops.json -o asv_bench/gflops.png
"""
from __future__ import annotations

import argparse
import ast
import itertools
import json
import math
import pathlib
import platform
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "benchmarks"))
import common  # noqa: E402  (asv_bench/benchmarks/common.py)

SERIES = {   # name: (asv benchmark, legend label, colour)
    "fastim2col": ("bench_conv2d.Conv2dGFlops.track_gflops", "fastim2col", "#1f77b4"),
    "numpy": ("bench_conv2d.NumpyConv2dGFlops.track_gflops_numpy",
              "NumPy im2col (sliding_window_view) + matmul", "#7f7f7f"),
    "torch": ("bench_conv2d.TorchConv2dGFlops.track_gflops_torch",
              "PyTorch F.conv2d", "#ff7f0e"),
}
DTYPE = "float32"


# --------------------------------------------------------------- asv results
def find_asv_results(spec: str) -> pathlib.Path:
    path = pathlib.Path(spec)
    if path.is_file():
        return path
    files = [p for p in (HERE / "results").glob("*/*.json") if p.name != "machine.json"]
    if spec != "latest":
        files = [p for p in files if p.name.startswith(spec)]
    if not files:
        sys.exit(f"plot_results: no asv results matching {spec!r} under {HERE / 'results'}")
    return max(files, key=lambda p: json.loads(p.read_text()).get("date", 0))


def load_asv(path: pathlib.Path, batch: int, threads: list[int]) -> tuple[dict, dict]:
    """{series: {threads: {layer: GFLOP/s or None}}} and run metadata."""
    doc = json.loads(path.read_text())
    columns = doc["result_columns"]
    data = {}
    for series, (bench, _, _) in SERIES.items():
        entry = doc["results"].get(bench)
        if entry is None:
            continue
        row = dict(zip(columns, entry))
        values, params = row.get("result"), row.get("params")
        if values is None or params is None:
            continue
        params = [[ast.literal_eval(v) for v in p] for p in params]
        table = {t: {} for t in threads}
        # asv stores results in itertools.product order of the params.
        index = 0
        for combo in itertools.product(*params):
            layer, b, t = combo
            value = values[index] if index < len(values) else None
            index += 1
            if b == batch and t in table:
                ok = value is not None and not (isinstance(value, float) and math.isnan(value))
                table[t][layer] = float(value) if ok else None
        data[series] = table
    meta = {
        "source": f"asv results {path.relative_to(HERE) if path.is_relative_to(HERE) else path}",
        "commit": doc.get("commit_hash", "")[:8],
        "machine": path.parent.name,
        "env": doc.get("env_name", ""),
    }
    return data, meta


# ----------------------------------------------------------------- measuring
def measure(series: str, layer_name: str, batch: int, threads: int) -> float | None:
    """GFLOP/s of one conv2d, timed like the asv track_ benchmarks."""
    layer = common.LAYERS[layer_name]
    xs, ws, _ = common.shapes(layer, batch)
    x, w = common.rng_arrays([xs, ws], DTYPE)
    flops = common.conv_flops(layer, batch)
    if series == "fastim2col":
        if common.fastim2col is None:
            return None
        common.set_threads(threads)
        t = common.median_time(common.fastim2col.conv2d, x, w, **common.conv_kwargs(layer))
    elif series == "numpy":
        with common.blas_threads(threads):
            t = common.median_time(common.numpy_conv2d, x, w, layer.stride, layer.pad,
                                   layer.groups)
    else:
        try:
            import torch
        except ImportError:
            return None
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                t = common.median_time(torch.nn.functional.conv2d, torch.from_numpy(x),
                                       torch.from_numpy(w), **common.conv_kwargs(layer))
        finally:
            torch.set_num_threads(saved)
    return common.rate(flops, t)


def fill_missing(data, measured, layers, batch, threads, verbose=True):
    """Measure every missing cell; series by series (in blocks, never
    interleaving two libraries call by call: their idle worker threads keep
    spinning for a while and would slow each other down)."""
    for series in SERIES:
        table = data.setdefault(series, {})
        for t in threads:
            row = table.setdefault(t, {})
            for layer in layers:
                if row.get(layer) is not None:
                    continue
                value = measure(series, layer, batch, t)
                if value is None:       # library not installed
                    break
                row[layer] = value
                measured.setdefault(series, {}).setdefault(t, []).append(layer)
                if verbose:
                    print(f"  measured {series:10s} {layer:12s} batch {batch} threads {t}: "
                          f"{value:7.2f} GFLOP/s", flush=True)


def versions() -> str:
    """Versions of what the script itself measured with."""
    out = [f"numpy {common.np.__version__}"]
    if common.fastim2col is not None:
        out.insert(0, f"fastim2col {common.fastim2col.__version__}")
    try:
        import torch
        out.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    return ", ".join(out)


# ------------------------------------------------------------------ plotting
def plot(data, measured, meta, layers, batch, threads, output):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    present = [s for s in SERIES if any(v is not None for t in threads
                                        for v in data.get(s, {}).get(t, {}).values())]
    fig, axes = plt.subplots(len(threads), 1, figsize=(11, 3.6 * len(threads) + 0.9),
                             squeeze=False, sharex=True, sharey=True)
    # Hatch the cells this script measured only when the rest came from asv.
    if not meta.get("source", "").startswith("asv"):
        measured = {}
    width = 0.8 / max(1, len(present))
    for ax, t in zip(axes[:, 0], threads):
        for i, series in enumerate(present):
            row = data[series].get(t, {})
            xs = [j + (i - (len(present) - 1) / 2) * width for j in range(len(layers))]
            vals = [row.get(layer) for layer in layers]
            hatched = set(measured.get(series, {}).get(t, []))
            for x, layer, v in zip(xs, layers, vals):
                if v is None:
                    ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=6)
                    continue
                ax.bar(x, v, width, color=SERIES[series][2],
                       hatch="///" if layer in hatched else None,
                       edgecolor="white" if layer in hatched else None, linewidth=0)
                ax.text(x, v, f"{v:.0f}" if v >= 10 else f"{v:.1f}", ha="center",
                        va="bottom", fontsize=6.5)
        ax.set_ylabel("GFLOP/s")
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}", fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(y=0.12)
        ax.tick_params(labelleft=True)
    axes[-1, 0].set_xticks(range(len(layers)))
    axes[-1, 0].set_xticklabels([common.LABELS.get(layer, layer) for layer in layers],
                                fontsize=8)
    handles = [Patch(color=SERIES[s][2], label=SERIES[s][1]) for s in present]
    if any(measured.get(s) for s in present):
        handles.append(Patch(facecolor="lightgray", hatch="///", edgecolor="white",
                             label="hatched: measured by plot_results.py, not asv"))
    axes[0, 0].legend(handles=handles, fontsize=8, loc="upper right", framealpha=0.9)
    where = ", ".join(v for v in (meta.get("machine"), f"commit {meta['commit']}"
                                  if meta.get("commit") else "") if v)
    if meta.get("measured_with"):
        where += f"; {'measured here' if measured else 'measured'}: {meta['measured_with']}"
    fig.suptitle(f"conv2d throughput, {DTYPE}, NCHW, batch {batch} (higher is better)"
                 + (f"\n{where}" if where else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(output, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--asv-results", metavar="FILE|HASH|latest",
                     help="asv results JSON of one commit (or a hash prefix, or 'latest')")
    src.add_argument("--from-json", metavar="FILE", help="a JSON written by --save-json")
    parser.add_argument("--batch", type=int, default=8, choices=common.BATCHES)
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="one panel per thread count (default: 1, or those in --from-json)")
    parser.add_argument("--layers", nargs="+", default=list(common.LAYERS),
                        choices=list(common.LAYERS))
    parser.add_argument("--no-measure", action="store_true",
                        help="plot only what the input has; measure nothing")
    parser.add_argument("--save-json", metavar="FILE",
                        help="write the numbers (and which were measured here) to FILE")
    parser.add_argument("-o", "--output", default=str(HERE / "gflops.png"))
    args = parser.parse_args(argv)

    data, measured = {}, {}
    meta = {"machine": platform.node(), "commit": "", "source": "plot_results.py"}
    threads_given = args.threads is not None
    if not args.from_json and not threads_given:
        args.threads = [1]
    if args.from_json:
        doc = json.loads(pathlib.Path(args.from_json).read_text())
        data = {s: {int(t): row for t, row in tables.items()}
                for s, tables in doc["gflops"].items()}
        measured = {s: {int(t): cells for t, cells in tables.items()}
                    for s, tables in doc.get("measured_by_script", {}).items()}
        meta = doc.get("meta", meta)
        args.batch = doc.get("batch", args.batch)
        if args.threads is None:
            args.threads = sorted({t for tables in data.values() for t in tables})
    elif args.asv_results:
        path = find_asv_results(args.asv_results)
        print(f"plot_results: reading {path}")
        data, meta = load_asv(path, args.batch, args.threads)
    if not args.no_measure:
        fill_missing(data, measured, args.layers, args.batch, args.threads)
        meta["measured_with"] = versions()
    if args.save_json:
        doc = {"version": 1, "dtype": DTYPE, "batch": args.batch, "meta": meta,
               "gflops": {s: {str(t): row for t, row in tables.items()}
                          for s, tables in data.items()},
               "measured_by_script": {s: {str(t): cells for t, cells in tables.items()}
                                      for s, tables in measured.items()}}
        pathlib.Path(args.save_json).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"plot_results: wrote {args.save_json}")
    plot(data, measured, meta, args.layers, args.batch, args.threads, args.output)
    print(f"plot_results: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
