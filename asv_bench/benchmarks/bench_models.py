"""Whole networks: the convolutions of one training step of the models of
`python -m fastim2col bench --model` (fastim2col._models), one op at a time
(forward, input gradient, weight gradient), timed over the whole layer
sequence: each distinct layer called as often as it occurs, the model's
first layer without its input gradient. float32, NCHW, 2 threads. Commits
without the layer lists skip them; the U-Net at batch 8 (~0.7 TFLOP an op)
is skipped as too slow for the grid."""
import time

from .common import SMOKE, _Bench, fastim2col, fgrad, rng_arrays, set_threads, skip

try:
    from fastim2col import _models
except ImportError:   # commits before the model layer lists
    _models = None

MODELS = [] if _models is None else list(_models.MODELS)
OPS = ["forward", "input", "weight"]
BATCHES = [1, 8]
HEAVY = {("unet", 8)}
# (tools/asv_ci.sh) the first 2 layers of ResNet-18 at batch 1
LAYERS_LIMIT = None
if SMOKE and MODELS:
    MODELS, BATCHES, LAYERS_LIMIT = ["resnet18"], [1], 2


def _calls(layer, op, batch):
    """fastim2col's call of one op on one layer, on fresh inputs."""
    k, s, p, g = layer.kernel, layer.stride, layer.padding, layer.groups
    ho = layer.out_size()
    xs = (batch, layer.c_in, layer.size, layer.size)
    ws = (layer.c_out, layer.c_in // g, k, k)
    x, w, go = rng_arrays([xs, ws, (batch, layer.c_out, ho, ho)], "float32")
    if op == "forward":
        return lambda: fastim2col.conv2d(x, w, None, s, p, 1, g)
    if op == "input":
        return lambda: fgrad.conv2d_input(xs, w, go, s, p, 1, g)
    return lambda: fgrad.conv2d_weight(x, ws, go, s, p, 1, g)


class ModelStep(_Bench):
    params = [MODELS or ["none"], OPS, BATCHES]
    param_names = ["model", "op", "batch"]
    # a call of the whole sequence takes seconds (ResNet-50 at batch 8)
    repeat = (1, 3, 30.0)
    timeout = 600

    def setup(self, model, op, batch):
        if _models is None or fastim2col is None or model not in MODELS:
            skip("no model layer lists in this commit")
        if (model, batch) in HEAVY:
            skip(f"{model} at batch {batch} is too slow for the grid")
        set_threads(2)
        layers = _models.distinct_layers(model)[:LAYERS_LIMIT]
        self.calls = []
        self.flops = 0.0
        for d in layers:
            count = d.input_occurrences if op == "input" else d.occurrences
            if count:
                self.calls.append((_calls(d.layer, op, batch), count))
                self.flops += 2.0 * batch * d.layer.macs() * count
        for fn, _ in self.calls:   # warm-up: the planner's caches, page faults
            fn()

    def _step(self):
        for fn, count in self.calls:
            for _ in range(count):
                fn()

    def time_model_step(self, model, op, batch):
        self._step()

    def track_gflops(self, model, op, batch):
        start = time.perf_counter()
        self._step()
        return self.flops / (time.perf_counter() - start) / 1e9

    track_gflops.unit = "GFLOP/s"
