"""1-D and 3-D convolutions: the layer suites of `python -m fastim2col bench-nd`
(forward and both gradients, float32 and float64, batch 1, 2 threads), with
their throughput. Commits without 1-D/3-D support skip them."""
from .common import SMOKE, fastim2col, set_threads

try:
    from fastim2col import _bench_nd
except ImportError:   # commits before 1-D/3-D support
    _bench_nd = None

LAYERS = {} if _bench_nd is None else {**_bench_nd.LAYERS_1D, **_bench_nd.LAYERS_3D}
OPS = ["forward", "input", "weight"]
if SMOKE and LAYERS:   # (tools/asv_ci.sh: one layer of each suite)
    LAYERS = {name: LAYERS[name] for name in ("speech_dw_k9", "deep_128")}


class ConvND:
    params = [sorted(LAYERS) or ["none"], OPS, ["float32", "float64"]]
    param_names = ["layer", "op", "dtype"]
    timeout = 240

    def setup(self, layer, op, dtype):
        if _bench_nd is None or fastim2col is None or layer not in LAYERS:
            raise NotImplementedError("no 1-D/3-D convolutions in this commit")
        set_threads(2)
        self.layer = LAYERS[layer]
        x, w, go = _bench_nd.make_inputs(self.layer, 1, dtype)
        self.fn = _bench_nd.ours(fastim2col, self.layer, op, x, w, go)
        self.fn()

    def time_conv_nd(self, layer, op, dtype):
        self.fn()

    def track_gflops(self, layer, op, dtype):
        import time
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            self.fn()
            best = min(best, time.perf_counter() - start)
        return self.layer.flops(1) / best / 1e9

    track_gflops.unit = "GFLOP/s"
