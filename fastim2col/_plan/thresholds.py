"""The planner's thresholds: one frozen record, the defaults, and a
context-local override.

Every number the planning arithmetic compares a shape against is a field of
Thresholds, grouped by the module of fastim2col._plan that applies it, with
a line or two on why; the measurements behind them, and the commands that
reproduce them, are in docs/performance.md ("Planner thresholds"), keyed by
the field's name (the names are those of the module constants they were).

The planning functions read the record of the current context through
``current()`` (one contextvars lookup); ``tuned(**changes)`` replaces fields
for the calls inside a ``with`` block, in this context only (other threads
and asyncio tasks keep the defaults), as tests do to reach the kernels'
splits with small shapes. The kernels' own limits (register blocks, the
element-by-element kernel's channels) are not thresholds: they stay
constants of the modules, read from the compiled code.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Optional


@dataclass(frozen=True, slots=True)
class Thresholds:
    # ------------------------------------------------ common: threads, tiles, scratch
    # a tile of unrolled input (K_g x tile elements) stays within this: it
    # stays in a core's L2 next to BLAS's own packed panels
    TILE_BYTES: int = 1024 * 1024
    # Below this much work per thread, starting and joining a thread team costs
    # more than it saves (and on a busy machine a descheduled worker stalls the
    # whole call at the closing barrier): small calls run on fewer threads.
    MIN_FLOPS_PER_THREAD: float = 4_000_000
    MIN_BYTES_PER_THREAD: float = 256 * 1024
    SCRATCH_BYTES: int = 24 * 1024 * 1024   # per-thread weight-gradient sums, all threads
    MIN_GEMM_TILE: int = 128         # narrower tiles make GEMM inefficient
    TILE_SCRATCH_BYTES: int = 32 * 1024 * 1024   # all threads' tile buffers together
    MULTI_TILE_BYTES: int = 8 * 1024 * 1024      # per thread, for tiles of whole images
    TILE_ALIGN: int = 16             # tiles a multiple of this many positions

    # ------------------------------------------------ bands: the direct kernels
    # NCHW convs with kh x kw > 1, and depthwise ones, run in the direct kernels
    # (src/_direct.pyx, see use_direct), not unroll + GEMM: nothing is unrolled.
    # 1x1 layers stay with GEMM, which reads their input in place (docs/performance.md).
    DIRECT_BAND_BYTES: int = 1024 * 1024       # per-thread scratch: stays in L2
    DIRECT_MAX_BAND_BYTES: int = 8 * 1024 * 1024   # beyond this (huge dilations), GEMM
    # Bands are cut for load balance down to about this many grid positions
    # (then rounded to even heights; over 6 register blocks of 64 floats): each
    # band packs its halo rows again and ends in a partial block, so thinner
    # bands cost more than the balance gains (docs/performance.md).
    DIRECT_MIN_POSITIONS: int = 400
    # Below AVX-512 a register block holds 3 output channels (16 registers, not
    # 32): each input vector loaded serves 3 sums, not 6, and past this many
    # input channels OpenBLAS's GEMM (or the thin kernel) wins on ungrouped
    # layers; grouped ones (few channels a group) keep the direct kernels.
    DIRECT_AVX2_MAX_CHANNELS: int = 16

    # ------------------------------------------------ conv2d
    # NCHW conv2d GEMMs (1x1 layers, and others off the direct kernels) of
    # tiles of at least THIN_FORWARD_MIN_POSITIONS positions, at most
    # THIN_FORWARD_MAX_OUTPUTS output channels a block and THIN_FORWARD_MAX_TERMS
    # input channels x taps: the thin kernel, the tile's rows (x's own rows for
    # 1x1) its vectors, the block's weights broadcast. Beyond these limits BLAS
    # won or was not measured (docs/performance.md).
    THIN_FORWARD_MIN_POSITIONS: int = 128
    THIN_FORWARD_MAX_OUTPUTS: int = 512
    THIN_FORWARD_MAX_TERMS: int = 1024
    # NHWC conv2d gathers each unit's input band from every pixel's channels, a
    # transposition repeated by every block of output channels: past this many
    # input channels a group, unroll + GEMM wins (NCHW, which copies its bands,
    # keeps the direct kernels; docs/performance.md).
    NHWC_DIRECT_MAX_CHANNELS: int = 384

    # ------------------------------------------------ input gradient
    # The input gradient reads its weights flipped and transposed in place: a
    # register block's weights are then short runs a weight row apart, a new page
    # every kh*kw taps, read again by every block. Past this many bytes of weights
    # per group the TLB misses cost more than the direct kernels save: GEMM + fold
    # there (docs/performance.md).
    DIRECT_FLIPPED_WEIGHT_BYTES: int = 8 * 1024 * 1024
    # Below AVX-512, stride-1 NCHW input gradients over at least this many
    # positions (all images) run as the forward of grad_output with a flipped
    # copy of the weights (use_flipped_forward); on fewer, the copy (a strided
    # transpose, ~4 ns an element) costs more than the forward's tiles save.
    FLIPPED_FORWARD_MIN_POSITIONS: int = 1536
    NHWC_MIN_BLOCK: int = 32   # input channels per NHWC input-gradient block (GEMMs of that width)
    # NHWC input gradients of few channels a group run element by element
    # (see input_gradient.FEW_MAX_CHANNELS): units are bands of input rows,
    # FEW_BANDS_PER_THREAD a thread; where grad_output does not start on a cache
    # line each copies the grad_output rows it reaches into a buffer that does,
    # at most FEW_COPY_BYTES: vector loads that split lines are slower, and so
    # are smaller copies (docs/performance.md).
    FEW_BANDS_PER_THREAD: int = 8
    FEW_COPY_BYTES: int = 512 * 1024
    # Input gradients folded from thin-GEMM tiles (use_thin_positions) of
    # layers with at most THIN_FOLD_MAX_CHANNELS input channels (RGB first
    # layers: no channel blocks to share among the threads): bands of output
    # rows of even height, at least THIN_FOLD_BANDS_PER_THREAD a thread in each
    # of the two fold phases. The thin GEMM runs as fast on thin tiles as on
    # wide ones, and uneven bands left a thread waiting at the phase barrier;
    # with more channels the rule does not pay (docs/performance.md).
    THIN_FOLD_MAX_CHANNELS: int = 3
    THIN_FOLD_BANDS_PER_THREAD: int = 4
    THIN_FOLD_MIN_POSITIONS: int = 256
    # float32 input-gradient GEMMs of at most this many positions (a 7 px
    # image's 49, a pair of them) run in the thin kernel (src/_direct_impl.h
    # thin_gemm): BLAS packs all of W^T for every GEMM and uses each packed
    # element only that many times; the thin kernel reads W in place. Past
    # about this many positions BLAS's packing pays for itself; float64 not:
    # its transposed BLAS GEMMs are as fast (docs/performance.md).
    THIN_MAX_POSITIONS: int = 128
    # NCHW input gradients whose tiles use_thin_gemm() declines, with at most
    # this many rows (input channels x taps) a unit, run in the thin kernel the
    # other way round: grad_output's rows, positions contiguous, read in place as
    # its vectors, the unit's weights (the small operand) broadcast; the tile
    # then folds (or, 1x1, lands in the result) as from BLAS. With BLAS,
    # positions-contiguous grad_output is the slower orientation (OpenBLAS packs
    # it, sgemm_itcopy). float64 not: no faster than BLAS (docs/performance.md).
    THIN_POSITIONS_MAX_ROWS: int = 512
    # NHWC input gradients (both dtypes, vector_fma) of layers with at least
    # TAPS_MIN_CHANNELS input channels a group, except 1x1 stride 1 (one GEMM
    # straight into the result): tap by tap (src/_conv.pyx grad_input_taps), each
    # tap one thin GEMM that gathers grad_output's rows and scatters its result
    # rows into the input gradient; nothing unrolled, folded or split in phases.
    # A unit's positions: bands of whole rows, at most TAPS_MAX_POSITIONS (its
    # packing scratch, THIN_KC x positions, stays in L2), at least
    # TAPS_MIN_POSITIONS (8 register tiles) when bands are cut for balance; images
    # smaller than TAPS_SET_POSITIONS go several to a unit (each tap's weights
    # then serve them all). Fewer channels: the thin kernel's vectors (channels)
    # would run part empty.
    TAPS_MIN_CHANNELS: int = 32
    TAPS_MAX_POSITIONS: int = 400
    TAPS_MIN_POSITIONS: int = 96
    TAPS_SET_POSITIONS: int = 196
    # A tap's weights, read in place, are rows kg * itemsize bytes apart: where
    # that maps THIN_KC rows onto fewer than TAPS_MIN_L1_SETS of the L1's 64
    # sets (64-byte lines), the kernel's slice of them no longer stays in L1;
    # each unit then copies each tap's weights (og x block, at most
    # TAPS_MAX_COPY_BYTES, so it stays in L2) into rows block + TAPS_COPY_PAD
    # apart (odd multiples of 64 bytes for whole register blocks of rows).
    TAPS_MIN_L1_SETS: int = 16
    TAPS_MAX_COPY_BYTES: int = 1024 * 1024
    TAPS_COPY_PAD: int = 16
    # NHWC input gradients read grad_output through strided NCHW views: with
    # more channels than this the direct kernels' gathers lose to GEMM + fold
    # (docs/performance.md).
    NHWC_DIRECT_INPUT_CHANNELS: int = 128

    # ------------------------------------------------ weight gradient
    DIRECT_WEIGHT_CHANNELS: int = 32      # input channels per weight-gradient band, at most
    DIRECT_WEIGHT_OUTPUTS: int = 32
    # Ungrouped layers: the direct weight gradient beats unroll + GEMM where the
    # GEMM is thin (few output channels) and the input has channels enough to
    # split: up to this many outputs in float64, DIRECT_WEIGHT_OUTPUTS in float32
    # (docs/performance.md).
    DIRECT_WEIGHT_OUTPUTS_F64: int = 64
    # Fewer input channels than DIRECT_WEIGHT_MIN_CHANNELS (first layers: the
    # GEMM's other side, channels x taps, is thin too): direct up to
    # DIRECT_WEIGHT_FEW_CHANNEL_OUTPUTS in both dtypes. 1x1 kernels stay GEMMs
    # (use_direct; docs/performance.md).
    DIRECT_WEIGHT_MIN_CHANNELS: int = 16
    DIRECT_WEIGHT_FEW_CHANNEL_OUTPUTS: int = 64
    # NHWC (input and grad_output read as strided NCHW views, ungrouped only):
    # the same rules, and with stride 1 at most this many outputs
    # (docs/performance.md).
    NHWC_DIRECT_WEIGHT_OUTPUTS: int = 32
    # ... and in float32 at most this many input channels with stride 1: the
    # thin GEMM path has caught up there (docs/performance.md).
    NHWC_DIRECT_WEIGHT_F32_CHANNELS: int = 32
    DIRECT_WEIGHT_MIN_POSITIONS: int = 196   # fewer: a short reduction, GEMM wins
    # NCHW, ungrouped, over at least DIRECT_WEIGHT_WIDE_POSITIONS output
    # positions: direct with up to DIRECT_WEIGHT_WIDE_OUTPUTS outputs, since its
    # register blocks' lane sums run as a tree of pairs (src/_direct_impl.h
    # lane_sums). Fewer positions lose (a short reduction), and so do more outputs
    # (the GEMM path's unroll is shared by more of them); in NHWC the tap-by-tap
    # kernels win (docs/performance.md).
    DIRECT_WEIGHT_WIDE_POSITIONS: int = 784
    DIRECT_WEIGHT_WIDE_OUTPUTS: int = 128
    # A unit packs its chunk's input band and its block's grad_output band
    # (a thread's next unit reuses whichever of the two it shares): chunks of at
    # least this many channels keep the grad_output band from being packed again
    # for every thin chunk (docs/performance.md).
    DIRECT_WEIGHT_MIN_CHUNK: int = 8
    DIRECT_WEIGHT_MIN_BLOCK: int = 4      # output channels per unit: a register block (AVX-512)
    # NCHW weight gradients split by input channels, tiles of one image's
    # positions, at most THIN_WEIGHT_NCHW_MAX_POSITIONS of them, with at least
    # THIN_WEIGHT_NCHW_MIN_OUTPUTS output channels a group: the thin
    # kernel (both dtypes), the unit's unrolled rows read along their positions
    # and copied transposed, a block of rows at a time (thin_gemm's w_row), the
    # tile's grad_output broadcast; gw written in place. With fewer channels on
    # larger images BLAS is as fast (docs/performance.md).
    THIN_WEIGHT_NCHW_MIN_OUTPUTS: int = 512
    THIN_WEIGHT_NCHW_MAX_POSITIONS: int = 64   # (7 px measured; larger tiles not)
    # NHWC weight gradients with tiles of this many positions (one image a
    # tile): the thin kernel, the unrolled tile's rows (positions x kh*kw*C) its
    # vectors, the block's grad_output broadcast, since BLAS packs the unrolled
    # tile again for every GEMM; 7 px tiles (49 positions) gain nothing.
    # (Layers with TAPS_WEIGHT_MIN_CHANNELS or more run tap by tap instead: 56 px
    # is what stays here; docs/performance.md.)
    THIN_WEIGHT_MIN_POSITIONS: int = 96
    THIN_WEIGHT_MAX_POSITIONS: int = 512
    # NHWC weight gradients of layers with at least TAPS_WEIGHT_MIN_CHANNELS
    # input channels a group, except 1x1 stride 1 (one GEMM straight from the
    # arrays), whose input's channels are contiguous: tap by tap (src/_conv.pyx
    # grad_weight_taps), each tap's part of the gradient one thin GEMM over
    # gathered rows of the input and grad_output; nothing unrolled, no per-thread
    # sums. Calls of about TAPS_WEIGHT_TERMS positions (images several to a
    # call as far as the batch goes, or bands of an image's rows), each call's
    # rows kept in cache across the unit's taps. Fewer channels: packing
    # grad_output's rows, 1/channels of the work, costs more than the taps save
    # (docs/performance.md).
    TAPS_WEIGHT_MIN_CHANNELS: int = 128
    TAPS_WEIGHT_TERMS: int = 392
    # Output channels a unit: at most (its grad_output slice, THIN_KC x this,
    # stays in L2), at least two of the thin kernel's register tiles where the
    # threads allow.
    TAPS_WEIGHT_MAX_OUT_BLOCK: int = 128
    TAPS_WEIGHT_MIN_OUT_BLOCK: int = 24
    # A channel unit's part of gw (see grad_weight_channels): chunks are cut finer
    # only past this, since wide chunks keep the GEMMs wide (docs/performance.md).
    GRAD_WEIGHT_PART_BYTES: int = 8 * 1024 * 1024
    MIN_CHUNK_COLUMNS: int = 64                  # narrower GEMMs lose speed
    MIN_UNEVEN_CHUNK: int = 8                    # uneven chunks at least this wide (balance)
    MIN_IMAGE_TILE: int = 512                    # positions per GEMM before images are batched
    CHANNEL_TILE_BYTES: int = 2 * 1024 * 1024    # a channel unit's multi-image tile, at most
    # Weight-gradient GEMMs of groups with at most this many output channels run
    # in the transposed orientation (OpenBLAS is faster with them as its M).
    TRANSPOSED_GEMM_OUTPUTS: int = 64

    # ------------------------------------------------ rules overridden (None: the rule)
    # For tests and experiments: a variant of a kernel that use_kernel cannot
    # name, taken or declined whatever its rule says, so that each variant runs
    # on every shape class and dtype, not only where the rule picks it.
    # NCHW input-gradient GEMMs in the transposed orientation (grad_input_transposed)
    TRANSPOSED_INPUT_GEMMS: Optional[bool] = None
    # NCHW input gradients by the thin kernel over grad_output's rows
    # (use_thin_positions; dtype and ISA level included)
    THIN_POSITIONS: Optional[bool] = None
    # the tap-by-tap input gradient copies each tap's weights (grad_input_taps)
    TAPS_COPY_WEIGHTS: Optional[bool] = None
    # the limits on ungrouped direct layers below AVX-512 (conv2d.use_direct,
    # DIRECT_AVX2_MAX_CHANNELS); None: where the machine is below AVX-512
    AVX2_DIRECT_RULE: Optional[bool] = None
    # stride-1 NCHW input gradients as the forward of grad_output with flipped
    # weights (input_gradient.use_flipped_forward)
    FLIPPED_FORWARD_INPUT: Optional[bool] = None


DEFAULTS = Thresholds()
NAMES = frozenset(f.name for f in dataclasses.fields(Thresholds))

_current: contextvars.ContextVar[Thresholds] = contextvars.ContextVar(
    "fastim2col_thresholds", default=DEFAULTS)

# The record the planning functions read: one lookup per function, no call
# of a Python function in between (the planner runs on every call).
current = _current.get


@contextlib.contextmanager
def tuned(**changes: Any) -> Iterator[Thresholds]:
    """Plan the calls inside the ``with`` block with the current thresholds
    but for ``changes`` (field names of Thresholds), context-locally;
    nested blocks apply on top of the enclosing one. Yields the record in
    force. An unknown name raises TypeError."""
    unknown = sorted(set(changes) - NAMES)
    if unknown:
        raise TypeError(f"tuned: no planner threshold named {', '.join(unknown)}; "
                        f"the names are the fields of fastim2col._plan.Thresholds")
    record = dataclasses.replace(_current.get(), **changes)
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)
