"""The convolution layers of whole networks, as data, for
``python -m fastim2col bench --model`` and the asv model benchmarks.

Each model is the ordered list of its convolutions at the usual input size
(224x224 for the torchvision classifiers, 256x256 for the U-Net), one entry
per distinct layer of a stage with `occurrences`, how many times that exact
layer occurs there. Names follow torchvision's module names (MobileNetV2's convs of
block ``features.i`` are called expand, dw and project); ``a-b`` spans blocks
a to b. Square inputs and kernels, dilation 1, zero padding, NCHW.

- resnet18, resnet50: torchvision's ResNet (v1.5: a bottleneck's stride sits
  in its 3x3, the downsample is a 1x1 with the same stride).
- mobilenet_v2: torchvision's MobileNetV2 (width 1.0): the 3x3/2 stem to 32,
  17 inverted residuals (expansion 1x1, depthwise 3x3, projection 1x1; the
  first block has no expansion) and the final 1x1 to 1280.
- unet: the 2-D U-Net of Ronneberger et al. with "same" padding (as in the
  common PyTorch ports): RGB input 3x256x256, 64 base channels, 4 max-pool
  downsamplings to 1024 channels at 16x16, two 3x3 convs a level, and a 1x1
  head to 2 classes. The 4 upsampling 2x2/2 transposed convolutions are left
  out: every layer here is a conv2d.
"""
from __future__ import annotations

from typing import NamedTuple


class ModelLayer(NamedTuple):
    name: str
    c_in: int
    c_out: int
    size: int          # input height = width
    kernel: int
    stride: int
    padding: int
    groups: int
    occurrences: int

    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    def macs(self) -> int:
        """Multiply-adds of one forward call at batch 1 (one occurrence)."""
        return (self.c_out * self.out_size() ** 2 * (self.c_in // self.groups)
                * self.kernel ** 2)

    def shape_key(self) -> tuple:
        return (self.c_in, self.c_out, self.size, self.kernel, self.stride, self.padding,
                self.groups)


L = ModelLayer

RESNET18 = [
    L("conv1", 3, 64, 224, 7, 2, 3, 1, 1),
    L("layer1.0-1.conv1/conv2", 64, 64, 56, 3, 1, 1, 1, 4),
    L("layer2.0.conv1", 64, 128, 56, 3, 2, 1, 1, 1),
    L("layer2.0.downsample", 64, 128, 56, 1, 2, 0, 1, 1),
    L("layer2.0.conv2,layer2.1.conv1/conv2", 128, 128, 28, 3, 1, 1, 1, 3),
    L("layer3.0.conv1", 128, 256, 28, 3, 2, 1, 1, 1),
    L("layer3.0.downsample", 128, 256, 28, 1, 2, 0, 1, 1),
    L("layer3.0.conv2,layer3.1.conv1/conv2", 256, 256, 14, 3, 1, 1, 1, 3),
    L("layer4.0.conv1", 256, 512, 14, 3, 2, 1, 1, 1),
    L("layer4.0.downsample", 256, 512, 14, 1, 2, 0, 1, 1),
    L("layer4.0.conv2,layer4.1.conv1/conv2", 512, 512, 7, 3, 1, 1, 1, 3),
]


def _bottleneck_stage(stage: int, blocks: int, c_in: int, width: int, size: int,
                      stride: int) -> list[ModelLayer]:
    """One ResNet-50 stage: block 0 takes c_in at `size` and strides in its
    3x3 and its 1x1 downsample; blocks 1.. take width*4 at size/stride."""
    out, after = width * 4, size // stride
    p = f"layer{stage}"
    return [
        L(f"{p}.0.conv1", c_in, width, size, 1, 1, 0, 1, 1),
        L(f"{p}.0.conv2", width, width, size, 3, stride, 1, 1, 1),
        L(f"{p}.0.conv3", width, out, after, 1, 1, 0, 1, 1),
        L(f"{p}.0.downsample", c_in, out, size, 1, stride, 0, 1, 1),
        L(f"{p}.1-{blocks - 1}.conv1", out, width, after, 1, 1, 0, 1, blocks - 1),
        L(f"{p}.1-{blocks - 1}.conv2", width, width, after, 3, 1, 1, 1, blocks - 1),
        L(f"{p}.1-{blocks - 1}.conv3", width, out, after, 1, 1, 0, 1, blocks - 1),
    ]


RESNET50 = [
    L("conv1", 3, 64, 224, 7, 2, 3, 1, 1),
    *_bottleneck_stage(1, 3, 64, 64, 56, 1),
    *_bottleneck_stage(2, 4, 256, 128, 56, 2),
    *_bottleneck_stage(3, 6, 512, 256, 28, 2),
    *_bottleneck_stage(4, 3, 1024, 512, 14, 2),
]


def _inverted_residuals() -> list[ModelLayer]:
    """MobileNetV2's 17 blocks from torchvision's (t, c, n, s) table: expand
    1x1 to c_in*t (absent when t = 1), depthwise 3x3 with the stride of the
    group's first block, project 1x1 to c; repeated blocks merged."""
    table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1)]
    layers, c_in, size, block = [], 32, 112, 1
    for t, c, n, s in table:
        # block `block` strides; blocks block+1 .. block+n-1 repeat at c channels
        for first, reps, cin, stride in ((True, 1, c_in, s), (False, n - 1, c, 1)):
            if reps == 0:
                continue
            lo, hi = (block, block) if first else (block + 1, block + n - 1)
            span = f"{lo}" if lo == hi else f"{lo}-{hi}"
            hidden = cin * t
            if t != 1:
                layers.append(L(f"features.{span}.expand", cin, hidden, size, 1, 1, 0, 1, reps))
            layers.append(L(f"features.{span}.dw", hidden, hidden, size, 3, stride, 1, hidden,
                            reps))
            size //= stride
            layers.append(L(f"features.{span}.project", hidden, c, size, 1, 1, 0, 1, reps))
        c_in, block = c, block + n
    return layers


MOBILENET_V2 = [
    L("features.0", 3, 32, 224, 3, 2, 1, 1, 1),
    *_inverted_residuals(),
    L("features.18", 320, 1280, 7, 1, 1, 0, 1, 1),
]


def _unet() -> list[ModelLayer]:
    layers, c, size = [L("inc.conv1", 3, 64, 256, 3, 1, 1, 1, 1),
                       L("inc.conv2", 64, 64, 256, 3, 1, 1, 1, 1)], 64, 256
    for level in range(1, 5):          # max-pool 2x2, then two 3x3 convs doubling c
        size //= 2
        layers += [L(f"down{level}.conv1", c, 2 * c, size, 3, 1, 1, 1, 1),
                   L(f"down{level}.conv2", 2 * c, 2 * c, size, 3, 1, 1, 1, 1)]
        c *= 2
    for level in range(1, 5):          # (transposed conv up), concat skip: 2 * (c/2) in
        size *= 2
        layers += [L(f"up{level}.conv1", c, c // 2, size, 3, 1, 1, 1, 1),
                   L(f"up{level}.conv2", c // 2, c // 2, size, 3, 1, 1, 1, 1)]
        c //= 2
    layers.append(L("outc", 64, 2, 256, 1, 1, 0, 1, 1))
    return layers


UNET = _unet()

MODELS: dict[str, list[ModelLayer]] = {
    "resnet18": RESNET18,
    "resnet50": RESNET50,
    "mobilenet_v2": MOBILENET_V2,
    "unet": UNET,
}


def conv_count(model: str) -> int:
    return sum(layer.occurrences for layer in MODELS[model])


def total_macs(model: str) -> int:
    """Forward multiply-adds of all the model's convolutions at batch 1."""
    return sum(layer.macs() * layer.occurrences for layer in MODELS[model])


class DistinctLayer(NamedTuple):
    """A layer shape timed once: its `occurrences` in the model, of which
    `input_occurrences` need an input gradient (not the model's first layer: the
    image needs no gradient in training)."""
    layer: ModelLayer
    occurrences: int
    input_occurrences: int
    names: tuple


def distinct_layers(model: str) -> list[DistinctLayer]:
    """The model's layers merged by shape (ResNet-50's layer1.0.conv3 and its
    downsample are the same conv), in order of first occurrence."""
    merged: dict[tuple, DistinctLayer] = {}
    for i, layer in enumerate(MODELS[model]):
        with_input = layer.occurrences - (1 if i == 0 else 0)
        key = layer.shape_key()
        if key in merged:
            d = merged[key]
            merged[key] = d._replace(occurrences=d.occurrences + layer.occurrences,
                                     input_occurrences=d.input_occurrences + with_input,
                                     names=d.names + (layer.name,))
        else:
            merged[key] = DistinctLayer(layer, layer.occurrences, with_input, (layer.name,))
    return list(merged.values())
