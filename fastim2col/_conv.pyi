"""Type stub for the compiled kernels in src/_conv.pyx (keep in sync).

These are internal: fastim2col.functional and fastim2col.grad check every
argument before calling them. Arrays are float32 or float64, all of one dtype.
One entry a kernel family; every argument after the arrays is a keyword.
shape = (N, C, C_out, groups) (input gradients: gx's channels, go's,
groups), geom = the 12 ints of fastim2col._args.Window, split = (tile,
block) unless said otherwise; in_place: a 1x1, stride 1, unpadded
convolution whose input (gx) is the GEMM's operand as it is.
"""
import numpy as np

FEW_CHANNELS: int

def force_isa(level: int) -> int:
    """For tests: this module's vector kernels at ISA level `level` (-1: the
    best); returns the level in effect."""

def gemm_forward(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    out: np.ndarray,
    *,
    shape: tuple[int, int, int, int],
    geom: tuple[int, ...],
    split: tuple[int, int],
    in_place: bool,
    nhwc: bool,
    n_threads: int,
    images_per_tile: int = 1,
    thin: bool = False,
) -> None:
    """out = conv2d(x, w) + bias by unrolled tiles and GEMM;
    images_per_tile > 1: tiles of that many whole images; thin (NCHW, one
    image a tile): GEMMs by the thin kernel."""

def gemm_grad_input(
    go: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    gx: np.ndarray,
    *,
    shape: tuple[int, int, int, int],
    geom: tuple[int, ...],
    split: tuple[int, int],
    in_place: bool,
    nhwc: bool,
    n_threads: int,
    images_per_tile: int = 1,
    transposed: bool = False,
    thin: bool = False,
    thin_positions: bool = False,
) -> None:
    """gx = the input gradient of conv2d (+ bias per channel of gx) by GEMM
    and fold; transposed (NCHW): GEMMs with positions as their rows; thin:
    GEMMs by the thin kernel (NCHW: transposed too); thin_positions (NCHW):
    by the thin kernel over grad_output's rows."""

def taps_grad_input(
    go: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    gx: np.ndarray,
    *,
    shape: tuple[int, int, int, int],
    geom: tuple[int, ...],
    split: tuple[int, int],
    images_per_set: int,
    weights_copy_ld: int,
    n_threads: int,
) -> None:
    """NHWC: gx = the input gradient of conv2d (+ bias) tap by tap; split =
    (input rows, input channels) a unit, images_per_set images a unit;
    weights_copy_ld > 0: each tap's weights copied first, rows that far apart."""

def elementwise_grad_input(
    go: np.ndarray,
    w_taps: np.ndarray,
    bias: np.ndarray | None,
    gx: np.ndarray,
    *,
    shape: tuple[int, int, int, int],
    geom: tuple[int, ...],
    band: int,
    copy_rows: bool,
    n_threads: int,
) -> None:
    """NHWC, at most FEW_CHANNELS input channels a group: gx = the input
    gradient of conv2d (+ bias) element by element, units of `band` input
    rows, w_taps as (groups, taps, cg, og); copy_rows: each unit's
    grad_output rows copied first."""

def gemm_grad_weight(
    x: np.ndarray,
    go: np.ndarray,
    gw: np.ndarray,
    *,
    shape: tuple[int, int, int, int],
    geom: tuple[int, ...],
    split: tuple[int, int],
    in_place: bool,
    nhwc: bool,
    per_thread_sums: bool,
    n_threads: int,
    images_per_tile: int = 1,
    transposed: bool = False,
    thin: bool = False,
) -> None:
    """gw = the weight gradient of conv2d by unrolled tiles and GEMM, units
    of tiles into per-thread sums or of blocks of output channels;
    transposed (NCHW, per-thread sums): GEMMs in the transposed orientation;
    thin (NHWC one image a tile): GEMMs by the thin kernel."""

def gemm_grad_weight_by_channels(
    x: np.ndarray,
    go: np.ndarray,
    gw: np.ndarray,
    *,
    shape: tuple[int, int, int, int],
    geom: tuple[int, ...],
    split: tuple[int, int],
    in_place: bool,
    n_threads: int,
    images_per_tile: int = 1,
    transposed: bool = False,
    thin: bool = False,
) -> None:
    """NCHW: gw = the weight gradient of conv2d, units owning chunks of
    split[1] input channels; transposed: GEMMs in the transposed
    orientation; thin (one image a tile, not transposed): GEMMs by the thin
    kernel."""

def taps_grad_weight(
    x: np.ndarray,
    go: np.ndarray,
    gw: np.ndarray,
    *,
    shape: tuple[int, int, int, int],
    geom: tuple[int, ...],
    split: tuple[int, int],
    taps_split: tuple[int, int, int],
    n_threads: int,
) -> None:
    """NHWC, x's channels contiguous: gw = the weight gradient of conv2d tap
    by tap, units of split[1] output channels x split[0] input channels x
    taps_split[0] taps, calls of taps_split[1] images or (taps_split[2] <
    out_h) bands of that many rows."""
