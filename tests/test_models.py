"""The networks' layer lists (fastim2col._models) against published facts of
the torchvision architectures, and `python -m fastim2col bench --model`."""
import contextlib
import io

import pytest

from fastim2col import _bench, _models


@pytest.mark.parametrize("model, convs", [("resnet18", 20), ("resnet50", 53),
                                          ("mobilenet_v2", 52), ("unet", 19)])
def test_conv_counts(model, convs):
    """ResNet-18's 17 3x3/7x7 convs and 3 downsamples; ResNet-50's stem, 16
    bottlenecks of 3 and 4 downsamples; MobileNetV2's stem, 2 + 16 * 3 block
    convs and the last 1x1; the U-Net's 2 convs on 9 levels and its head."""
    assert _models.conv_count(model) == convs


@pytest.mark.parametrize("model, gmacs", [("resnet18", 1.81), ("resnet50", 4.09),
                                          ("mobilenet_v2", 0.30)])
def test_macs_match_the_published_figures(model, gmacs):
    """Multiply-adds at 224x224 as published for the torchvision models (their
    fully connected layer, 0.5, 2 and 1.3 M, is within the tolerance)."""
    assert _models.total_macs(model) / 1e9 == pytest.approx(gmacs, rel=0.02)


@pytest.mark.parametrize("model, final", [("resnet18", (512, 7)), ("resnet50", (2048, 7)),
                                          ("mobilenet_v2", (1280, 7)), ("unet", (2, 256))])
def test_shapes_chain(model, final):
    """Every layer's input size is the image's or one that an earlier layer
    outputs, or half of it (max-pool), or for the U-Net twice it (upsampling);
    the last layer gives the classifier's channels and size."""
    layers = _models.MODELS[model]
    sizes = {layers[0].size}
    for layer in layers:
        assert layer.size in sizes, layer
        assert layer.c_in % layer.groups == 0 and layer.c_out % layer.groups == 0
        assert layer.padding == layer.kernel // 2, layer        # "same" convolutions
        out = layer.out_size()
        sizes |= {out, out // 2} | ({out * 2} if model == "unet" else set())
    assert (layers[-1].c_out, layers[-1].out_size()) == final


def test_strides_and_groups():
    """ResNets downsample 5 times (stem, max-pool, 3 stages: the stage's
    first 3x3 and its 1x1 downsample stride); MobileNetV2 strides in its stem
    and 4 depthwise convs, which have groups = channels (17 of them)."""
    for model in ("resnet18", "resnet50"):
        strided = [(layer.kernel, layer.occurrences) for layer in _models.MODELS[model]
                   if layer.stride == 2]
        assert sorted(strided) == [(1, 1)] * 3 + [(3, 1)] * 3 + [(7, 1)]
    mb = _models.MOBILENET_V2
    depthwise = [layer for layer in mb if layer.groups > 1]
    assert sum(layer.occurrences for layer in depthwise) == 17
    assert all(layer.groups == layer.c_in == layer.c_out and layer.kernel == 3
               for layer in depthwise)
    assert sum(layer.occurrences for layer in mb if layer.stride == 2) == 5
    assert [layer.stride for layer in mb if layer.stride == 2 and layer.groups == 1] == [2]


def test_distinct_layers_merge_equal_shapes():
    """ResNet-50's stage-1 conv3s and the downsample (64 -> 256, 1x1 at 56)
    are timed once for all; counts are kept, and only the stem lacks an input
    gradient."""
    for model in _models.MODELS:
        distinct = _models.distinct_layers(model)
        assert len({d.layer.shape_key() for d in distinct}) == len(distinct)
        assert sum(d.occurrences for d in distinct) == _models.conv_count(model)
        assert sum(d.input_occurrences for d in distinct) == _models.conv_count(model) - 1
        assert distinct[0].input_occurrences == distinct[0].occurrences - 1
    conv3 = next(d for d in _models.distinct_layers("resnet50")
                 if d.names[0] == "layer1.0.conv3")
    assert conv3.names == ("layer1.0.conv3", "layer1.0.downsample", "layer1.1-2.conv3")
    assert conv3.occurrences == conv3.input_occurrences == 4


@pytest.fixture
def fake_times(monkeypatch):
    """timed_blocks that calls each function once and says fastim2col takes
    1 ms, each GEMM orientation 2 and 4 ms, PyTorch 0.5 ms."""
    fixed = {"ours": 1e-3, "gemm_ab": 4e-3, "gemm_ba": 2e-3, "torch": 0.5e-3}

    def timed(fns, rounds, repeat, per_round=None, **kwargs):
        for fn in fns.values():
            fn()
        if per_round is not None:
            per_round.update({name: [fixed[name]] * rounds for name in fns})
        return {name: fixed[name] for name in fns}
    monkeypatch.setattr(_bench, "timed_blocks", timed)
    monkeypatch.setattr(_bench, "_load_warning", lambda threads: None)


def _run(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _bench.run_bench(argv) == 0
    return out.getvalue()


def _table(text, first):
    """{(first column, op/batch...): row} of the table whose header starts with `first`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [first])
    rows = []
    for line in lines[start + 2:]:
        if not line.strip() or line.startswith(("(", "warning", "resnet18")):
            break
        rows.append(line.split())
    return lines[start].split(), rows


def test_model_bench_rows_and_totals(fake_times, restore_threads):
    """Per layer and op: the call's time, times the count, over the faster
    GEMM; totals per op and for the step are the sums of time x count."""
    text = _run(["--model", "resnet18", "--layers-limit", "2", "--threads", "1",
                 "--batch", "1,8"])
    headers, rows = _table(text, "layer")
    assert headers == ["layer", "batch", "op", "count", "ms", "x", "count", "/gemm"]
    # the stem (count 1) has no input gradient; layer1's 3x3 occurs 4 times
    assert [(r[0], r[1], r[2], r[3]) for r in rows[:5]] == [
        ("conv1", "1", "forward", "1"), ("conv1", "1", "weight", "1"),
        ("layer1.0-1.conv1/conv2", "1", "forward", "4"),
        ("layer1.0-1.conv1/conv2", "1", "input", "4"),
        ("layer1.0-1.conv1/conv2", "1", "weight", "4")]
    assert len(rows) == 10 and rows[5][1] == "8"
    assert rows[2][4:] == ["1.00", "4.00", "0.50"]
    _, totals = _table(text, "total")
    by_op = {(r[0], r[1]): r for r in totals}
    assert by_op[("forward", "1")][2] == "5.0" and by_op[("input", "1")][2] == "4.0"
    assert by_op[("step", "1")][2:4] == ["14.0", "100%"]
    assert by_op[("step", "8")][5:] == ["28.0", "0.50"]     # gemm ms, /gemm
    assert "--layers-limit" in text


def test_model_bench_against_torch(fake_times, restore_threads):
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        text = _run(["--model", "mobilenet_v2", "--layers-limit", "2", "--threads", "1",
                     "--compare", "torch"])
    finally:
        # torch.set_num_threads calls omp_set_num_threads in the OpenMP runtime
        # fastim2col shares, which get_num_threads then reads as a limit
        torch.set_num_threads(before)
    headers, rows = _table(text, "layer")
    assert headers[-1] == "/torch" and rows[1][-1] == "2.00"
    _, totals = _table(text, "total")
    assert totals[-1][0] == "step" and totals[-1][-2:] == ["2.5", "2.00"]


def test_model_bench_really_runs(restore_threads, monkeypatch):
    """The real timing path, one layer, one round, no waiting."""
    monkeypatch.setattr(_bench, "COOLDOWN_S", 0.0)
    monkeypatch.setattr(_bench, "WARMUP_S", 0.0)
    text = _run(["--model", "unet", "--layers-limit", "1", "--threads", "1", "--rounds", "1",
                 "--repeat", "1"])
    _, totals = _table(text, "total")
    step = totals[-1]
    assert step[0] == "step" and float(step[2]) > 0 and float(step[6]) > 0


def test_unknown_model():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        _bench.run_bench(["--model", "vgg11"])
    assert exc.value.code == 2
    assert "invalid choice: 'vgg11'" in err.getvalue() and "resnet50" in err.getvalue()


def test_layers_limit_below_one():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert _bench.run_bench(["--model", "resnet18", "--layers-limit", "0"]) == 2
    assert "--layers-limit" in err.getvalue()
