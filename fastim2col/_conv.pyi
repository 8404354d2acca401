"""Type stub for the compiled kernels in src/_conv.pyx (keep in sync).

These are internal: fastim2col.functional and fastim2col.grad check every
argument before calling them. Arrays are float32 or float64, all of one dtype.
"""
import numpy as np

def conv2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    out: np.ndarray,
    shape: tuple[int, int, int, int],
    geom: tuple[int, ...],
    split: tuple[int, int],
    nhwc: bool,
    direct: bool,
    n_threads: int,
    images_per_tile: int = 1,
    thin: bool = False,
) -> None:
    """out = conv2d(x, w) + bias; shape = (N, C, C_out, groups), geom = the
    12 ints of fastim2col._args.Window, split = (tile, block);
    images_per_tile > 1: tiles of that many whole images; thin (NCHW, one
    image a tile): GEMMs by the thin kernel."""

def conv2d_grad_input(
    go: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    gx: np.ndarray,
    shape: tuple[int, int, int, int],
    geom: tuple[int, ...],
    split: tuple[int, int],
    nhwc: bool,
    direct: bool,
    n_threads: int,
    images_per_tile: int = 1,
    transposed: bool = False,
    thin: bool = False,
    thin_positions: bool = False,
    by_taps: bool = False,
    weights_copy_ld: int = 0,
    few: bool = False,
    few_copy: bool = True,
) -> None:
    """gx = the input gradient of conv2d (+ bias per channel of gx);
    transposed (NCHW): GEMMs with positions as their rows; thin: GEMMs by the
    thin kernel (NCHW: transposed too); thin_positions (NCHW): by the thin
    kernel over grad_output's rows; by_taps (NHWC): tap by tap, split =
    (input rows, input channels) a unit, images_per_tile images a unit,
    weights_copy_ld > 0: each tap's weights copied first, rows that far apart;
    few (NHWC, at most 4 input channels a group): element by element, units
    of split[0] input rows, w as (groups, taps, cg, og), few_copy: each unit's
    grad_output rows copied first."""

FEW_CHANNELS: int

def force_isa(level: int) -> int:
    """For tests: this module's vector kernels at ISA level `level` (-1: the
    best); returns the level in effect."""

def conv2d_grad_weight(
    x: np.ndarray,
    go: np.ndarray,
    gw: np.ndarray,
    shape: tuple[int, int, int, int],
    geom: tuple[int, ...],
    split: tuple[int, int],
    nhwc: bool,
    direct: bool,
    per_thread_sums: bool,
    n_threads: int,
    images_per_tile: int = 1,
    by_channels: bool = False,
    transposed: bool = False,
    thin: bool = False,
    by_taps: bool = False,
    taps_split: tuple[int, int, int] = (1, 1, 1),
) -> None:
    """gw = the weight gradient of conv2d; thin (NHWC one image a tile, or
    NCHW by_channels not transposed): GEMMs by the thin kernel; by_taps (NHWC): tap by tap, units of split[1]
    output channels x split[0] input channels x taps_split[0] taps, calls of
    taps_split[1] images or (taps_split[2] < out_h) bands of that many rows."""
