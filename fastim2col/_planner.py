"""Planning: one Plan value per call, decided here and nowhere else.

Each plan_* function takes a validated Call (fastim2col._calls) and returns
the Plan its kernel runs (fastim2col._kernels.Plan): the kernel's name, the
threads, the scratch bound and the numbers the compiled entry takes. The
split arithmetic lives in fastim2col._plan, its thresholds in one record
(fastim2col._plan.Thresholds) read from the current context, so that
fastim2col._plan.tuned() changes them for a ``with`` block; the machine's
facts in fastim2col._machine. A kernel forced with use_kernel is planned if it can
run the call, else refused with a ValueError that says why.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from . import _direct
from ._plan import bands as PB, common as PC, conv2d as PF, \
    input_gradient as PI, weight_gradient as PW
from ._plan.thresholds import current
from ._args import BLAS_INT_MAX, Window
from ._calls import Call
from ._kernels import KernelRefused, Plan, forced_kernel
from ._machine import machine

# The kernels that run images only (the GEMM kernels run volumes too).
_PLANE_KERNELS = ("direct", "depthwise", "taps", "elementwise")

# What each kernel runs, for the refusals of use_kernel.
_RUNS = {
    "unroll": "im2col only",
    "fold": "col2im only",
    "gemm": "conv2d, conv_transpose2d and both gradients",
    "thin_gemm": "conv2d (NCHW), the input gradients, and weight gradients of NHWC layers "
                 "or NCHW layers split by input channels",
    "direct": "conv2d, the weight gradient, and input gradients of stride-1 layers",
    "depthwise": "NHWC depthwise conv2d only (one input channel a group, groups > 1)",
    "taps": "NHWC input and weight gradients",
    "elementwise": "NHWC input gradients of at most 4 input channels a group",
}


def _refuse(call: Call, kernel: str, why: str) -> KernelRefused:
    return KernelRefused(f"use_kernel({kernel!r}) cannot run this {call.op} call: {why}")


def _gemm_only(call: Call, forced: str | None) -> bool:
    """Volumes and padding modes other than zeros run on the GEMM kernels
    (the image kernels read 4-d arrays and zero padding): refuse the others."""
    if not (call.volume or call.win.pad_mode):
        return False
    if forced in _PLANE_KERNELS:
        raise _refuse(call, forced, "it runs images (2-d), not volumes" if call.volume
                      else "it reads zero padding only")
    return True


def _check_forced(call: Call, forced: str | None, kernels: tuple[str, ...]) -> None:
    if forced is not None and forced not in kernels:
        raise _refuse(call, forced, f"it runs {_RUNS[forced]}")


def _scratch(n_threads: int, *buffer_elements: int, itemsize: int) -> int:
    """Bytes of all threads' scratch buffers (MemoryError for absurd sizes)."""
    PC.check_scratch(n_threads, *buffer_elements, itemsize=itemsize)
    return n_threads * sum(buffer_elements) * itemsize


def _empty(call: Call, why: str = "empty result") -> Plan:
    return Plan(call.op, "fill", 1, 0, why)


def unit_window(win: Window) -> bool:
    """1x1 (1x1x1), stride 1, unpadded: output and input positions coincide."""
    return (win.n_taps, win.stride_h, win.stride_w, win.stride_d, win.pad_h, win.pad_w,
            win.pad_d, win.n_out) == (1, 1, 1, 1, 0, 0, 0, win.n_in)


def in_place_1x1(x, win: Window, nhwc: bool, cg: int) -> bool:
    """A unit window: the input already is the GEMM operand, if its strides
    let BLAS read it as a matrix with a valid leading dimension (positions
    evenly strided, channels apart)."""
    if not unit_window(win):
        return False
    item = x.itemsize
    if nhwc:
        *s_dhw, s_c = (s // item for s in x.strides[1:])
        s_w = s_dhw[-1]
        rows_ok = s_dhw[-2] == win.in_w * s_w and (len(s_dhw) == 2
                                                   or s_dhw[0] == win.in_h * s_dhw[-2])
        return s_c == 1 and rows_ok and max(1, cg) <= s_w <= BLAS_INT_MAX
    s_c, *s_dhw = (s // item for s in x.strides[1:])
    rows_ok = s_dhw[-1] == 1 and s_dhw[-2] == win.in_w and (len(s_dhw) == 2
                                                            or s_dhw[0] == win.in_h * win.in_w)
    return rows_ok and win.n_in <= s_c <= BLAS_INT_MAX


# ---------------------------------------------------------------- im2col, col2im

def plan_im2col(call: Call) -> Plan:
    _check_forced(call, forced_kernel(), ("unroll",))
    size = call.result_size()
    if size == 0:
        return _empty(call)
    n_threads = PC.copy_threads(size * call.itemsize)
    n_pos = call.win.n_out
    if call.nhwc:
        tile = PC.im2col_tile(call.n, n_pos, n_threads)
    else:
        tile = PC.im2col_tile(call.n * call.channels, n_pos, n_threads, call.win.out_w)
    return Plan(call.op, "unroll", n_threads, 0, "copies each window into its column",
                {"tile": tile})


def plan_col2im(call: Call) -> Plan:
    _check_forced(call, forced_kernel(), ("fold",))
    if call.result_size() == 0:
        return _empty(call)
    n_threads = PC.copy_threads(call.x.nbytes)
    rows = PC.col2im_rows(call.n, call.win, n_threads)
    if call.win.pad_mode:   # (one band an image, as the input gradient's)
        rows = call.win.out_d * call.win.out_h
    return Plan(call.op, "fold", n_threads, 0, "adds each column into its window",
                {"rows_per_band": rows})


# ---------------------------------------------------------------- conv2d

def plan_conv2d(call: Call) -> Plan:
    forced = forced_kernel()
    _check_forced(call, forced, ("direct", "depthwise", "gemm", "thin_gemm"))
    size = call.result_size()
    if size == 0:
        return _empty(call)
    kg, win, nhwc, itemsize = call.kg, call.win, call.nhwc, call.itemsize
    if kg == 0:
        return _empty(call, "no input channels: only the bias")
    n, groups, cg, og = call.n, call.groups, call.cg, call.og
    n_threads = PC.conv_threads(2.0 * size * kg)
    m = machine()
    volume = _gemm_only(call, forced)
    if forced == "direct" or (forced is None and not volume and PF.use_direct(
            groups, cg, og, win, nhwc, itemsize, m.isa_level)):
        bands = PB.direct_split(n, groups, cg, og, win, itemsize, n_threads,
                               m.vector_elements(itemsize))
        if bands is not None:
            scratch = n_threads * PB.direct_unit_bytes(cg, og, win, itemsize,
                                                      m.vector_elements(itemsize), bands)
            return Plan(call.op, "direct", n_threads, scratch,
                        "forced" if forced else
                        "a window wider than 1x1, or depthwise: direct beats unroll + GEMM",
                        {"split": bands})
        if forced:
            raise _refuse(call, forced, "one output row's band exceeds the direct kernels' "
                                        "scratch bound (huge dilations)")
    depthwise = nhwc and cg == 1 and groups > 1 and not volume
    if forced == "depthwise" and not depthwise:
        raise _refuse(call, forced, f"it runs {_RUNS['depthwise']}")
    if depthwise and forced in (None, "depthwise"):
        return Plan(call.op, "depthwise", n_threads, og * win.kernel_h * win.kernel_w
                    * groups * itemsize, "forced" if forced else
                    "NHWC depthwise: along channel vectors", {"multiplier": og})
    in_place = in_place_1x1(call.x, win, nhwc, cg)
    n_pos = win.n_out
    if forced == "thin_gemm" and nhwc:
        raise _refuse(call, forced, "the thin GEMM runs NCHW forward tiles only")
    images = None if forced == "thin_gemm" else PF.forward_images(
        n, groups, og, kg, n_pos, itemsize, n_threads, in_place)
    per_tile = 1
    if images is not None:
        per_tile, block = images
        split = (per_tile * n_pos, block)
        tile_elements = (kg + block) * split[0]
    else:
        split = PF.forward(n, groups, og, kg, n_pos, itemsize, n_threads, in_place, nhwc)
        tile_elements = kg * split[0]
    thin = per_tile == 1 and PF.use_thin_forward(nhwc, split[0], split[1], kg, itemsize,
                                                m.isa_level)
    if forced is not None:
        thin = forced == "thin_gemm"
    scratch = _scratch(n_threads, tile_elements, _direct.THIN_TERMS * split[1] if thin else 0,
                       itemsize=itemsize)
    why = ("forced" if forced else "1x1: the input is read in place" if in_place
           else f"{per_tile} whole images a tile" if per_tile > 1 else "unroll + GEMM")
    return Plan(call.op, "thin_gemm" if thin else "gemm", n_threads, scratch, why,
                {"split": split, "in_place": in_place, "images_per_tile": per_tile,
                 "thin": thin})


# ---------------------------------------------------------------- input gradient

def _input_fill(call: Call) -> Plan | None:
    if call.result_size() == 0:
        return _empty(call)
    if call.kg == 0 or call.grad.size == 0:
        return _empty(call, "nothing to scatter: zeros" + (" and the bias" if call.bias
                                                          is not None else ""))
    return None


def _flipped_window(win: Window) -> Window | None:
    """The stride-1 input gradient as a conv2d of grad_output with the
    flipped weights: its window, or None (strided, or padded past the reach)."""
    pad_h = win.dilation_h * (win.kernel_h - 1) - win.pad_h
    pad_w = win.dilation_w * (win.kernel_w - 1) - win.pad_w
    if (win.stride_h, win.stride_w) != (1, 1) or pad_h < 0 or pad_w < 0:
        return None
    return Window(win.out_h, win.out_w, win.in_h, win.in_w, win.kernel_h, win.kernel_w, 1, 1,
                  pad_h, pad_w, win.dilation_h, win.dilation_w)


def plan_input_gradient(call: Call) -> Plan:
    """conv2d_input and conv_transpose2d (its bias seeds the result)."""
    forced = forced_kernel()
    _check_forced(call, forced, ("taps", "elementwise", "direct", "gemm", "thin_gemm"))
    fill = _input_fill(call)
    if fill is not None:
        return fill
    n, groups, cg, og, kg = call.n, call.groups, call.cg, call.og, call.kg
    win, nhwc, itemsize = call.win, call.nhwc, call.itemsize
    m = machine()
    vector = m.vector_elements(itemsize)
    n_threads = PC.conv_threads(2.0 * call.grad.size * kg)
    in_place = unit_window(win)
    if _gemm_only(call, forced):
        return _gemm_input_gradient(call, forced, n_threads, in_place)
    tap_kernels_ok = nhwc and not in_place
    if forced in ("taps", "elementwise") and not tap_kernels_ok:
        raise _refuse(call, forced, "it runs NHWC input gradients of windows other than an "
                                    "unpadded 1x1 at stride 1")
    if forced == "taps" or (forced is None and PI.use_taps(nhwc, cg, in_place, m.isa_level)):
        band, block, per_set, copy_ld = PI.grad_input_taps(
            n, groups, cg, og, call.w.shape[1], win, itemsize, n_threads, vector)
        positions = per_set * band * win.in_w
        scratch = (_scratch(n_threads, _direct.THIN_TERMS * positions, og * copy_ld,
                            itemsize=itemsize)
                   + _scratch(n_threads, 2 * positions, itemsize=8))   # the offset tables
        return Plan(call.op, "taps", n_threads, scratch,
                    "forced" if forced else "NHWC: each tap a thin GEMM, nothing folded",
                    {"split": (band, block), "images_per_set": per_set,
                     "weights_copy_ld": copy_ld})
    if forced == "elementwise" and cg > PI.FEW_MAX_CHANNELS:
        raise _refuse(call, forced, f"{cg} input channels a group (at most "
                                    f"{PI.FEW_MAX_CHANNELS})")
    if forced == "elementwise" or (forced is None and PI.use_few_channels(
            nhwc, cg, og, in_place, win, vector, m.isa_level)):
        band = PI.grad_input_few(n, groups, og, win, itemsize, n_threads)
        # grad_output's rows are copied (to start on cache lines) unless each
        # group's channels of every pixel already do
        copy = bool(call.grad.ctypes.data % m.cache_line or (og * itemsize) % m.cache_line)
        return Plan(call.op, "elementwise", n_threads, call.w.nbytes + m.cache_line,
                    "forced" if forced else "few channels a group: dot products in registers",
                    {"band": band, "copy_rows": copy})
    flipped = _flipped_window(win)
    if forced in (None, "direct"):
        plan = _direct_input_gradient(call, forced, n_threads, vector, flipped)
        if plan is not None:
            return plan
    if (forced is None and flipped is not None and not nhwc and not in_place
            and PI.use_flipped_forward(groups, n * win.in_h * win.in_w, m.isa_level)):
        plan = _flipped_forward_input_gradient(call, flipped)
        if plan is not None:
            return plan
    return _gemm_input_gradient(call, forced, n_threads, in_place)


def flipped_forward_call(call: Call, flipped: Window) -> Call:
    """The conv2d of grad_output that a stride-1 input gradient is: og
    channels a group in, cg out, the flipped window; its weights (made
    when it runs: flipped_weights) planned by shape alone."""
    w_shape = (call.channels, call.og * flipped.n_taps)
    return dataclasses.replace(
        call, op="conv2d", name="", x=call.grad,
        w=np.broadcast_to(np.empty((), call.dtype), w_shape),
        channels=call.rows, rows=call.channels, win=flipped)


def _flipped_forward_input_gradient(call: Call, flipped: Window) -> Plan | None:
    """A stride-1 NCHW input gradient as conv2d's unroll + GEMM of grad_output
    with the weights flipped and transposed (a copy the size of the weights):
    the forward's tiles and GEMM orientation, no fold."""
    forward = plan_conv2d(flipped_forward_call(call, flipped))
    if forward.kernel not in ("gemm", "thin_gemm"):
        return None
    return Plan(call.op, forward.kernel, forward.threads,
                forward.scratch_bytes + call.w.nbytes,
                "stride 1: unroll + GEMM of grad_output, flipped weights",
                {"flipped": tuple(flipped), **forward.params})


def _direct_input_gradient(call: Call, forced, n_threads: int, vector: int,
                           flipped: Window | None) -> Plan | None:
    """With stride 1, conv2d's input gradient is itself a conv2d (`flipped`,
    _flipped_window): of grad with the weights flipped in space and
    transposed per group (the kernels read them so, no copy), padded by
    dilation * (kernel - 1) - padding."""
    if flipped is None:
        if forced:
            raise _refuse(call, forced, "direct input gradients need stride 1 and padding "
                                        "within dilation * (kernel - 1)")
        return None
    groups, og, cg, itemsize = call.groups, call.og, call.cg, call.itemsize
    if forced is None and (
            og * cg * flipped.kernel_h * flipped.kernel_w * itemsize
            > current().DIRECT_FLIPPED_WEIGHT_BYTES
            or not PI.use_direct_input(groups, og, cg, flipped, call.nhwc, itemsize,
                                        machine().isa_level)):
        return None
    split = PB.direct_split(call.n, groups, og, cg, flipped, itemsize, n_threads, vector)
    if split is None:
        if forced:
            raise _refuse(call, forced, "one row's band exceeds the direct kernels' scratch "
                                        "bound (huge dilations)")
        return None
    scratch = n_threads * PB.direct_unit_bytes(og, cg, flipped, itemsize, vector, split)
    return Plan(call.op, "direct", n_threads, scratch,
                "forced" if forced else "stride 1: a conv2d of grad_output, flipped weights",
                {"geom": tuple(flipped), "split": split})


def _gemm_input_gradient(call: Call, forced, n_threads: int, in_place: bool) -> Plan:
    n, groups, cg, og, kg = call.n, call.groups, call.cg, call.og, call.kg
    win, nhwc, itemsize = call.win, call.nhwc, call.itemsize
    isa_level = machine().isa_level
    n_pos = win.n_out
    images = PI.grad_input_images(n, groups, cg, og, kg, n_pos, itemsize, n_threads, nhwc,
                                 in_place)
    per_tile = 1
    if images is not None:
        per_tile, block = images
        split = (per_tile * n_pos, block)
        tile_elements = (kg + og) * split[0]
    else:
        # (a forced kernel never runs the thin GEMM over grad_output's rows)
        thin_fold = (forced is None and not call.volume
                     and PI.use_thin_positions(nhwc, kg, itemsize, isa_level))
        split = PI.grad_input(n, groups, cg, kg, win, itemsize, n_threads, nhwc, in_place,
                             thin_fold)
        tile_elements = kg * split[0]
    unit_rows = split[1] * win.n_taps   # a unit's channels x taps
    if forced is None:
        thin = PI.use_thin_gemm(split[0], itemsize, isa_level)
        thin_positions = not thin and PI.use_thin_positions(nhwc, unit_rows, itemsize,
                                                           isa_level)
    else:
        thin, thin_positions = forced == "thin_gemm", False
    thin_elements = unit_rows if thin_positions else split[0] if thin else 0
    scratch = _scratch(n_threads, tile_elements, _direct.THIN_TERMS * thin_elements,
                       itemsize=itemsize)
    transposed = not nhwc and not thin_positions and (thin or PI.grad_input_transposed(
        split[0], unit_rows, itemsize))
    why = ("forced" if forced else "1x1: GEMM straight into the result" if in_place
           else f"{per_tile} whole images a unit" if per_tile > 1 else "GEMM + fold")
    return Plan(call.op, "thin_gemm" if thin or thin_positions else "gemm", n_threads, scratch,
                why, {"split": split, "in_place": in_place, "images_per_tile": per_tile,
                      "transposed": transposed, "thin": thin,
                      "thin_positions": thin_positions})


# ---------------------------------------------------------------- weight gradient

def plan_weight_gradient(call: Call) -> Plan:
    forced = forced_kernel()
    _check_forced(call, forced, ("direct", "taps", "gemm", "thin_gemm"))
    if call.result_size() == 0:
        return _empty(call)
    if call.grad.size == 0 or call.x.size == 0:
        return _empty(call, "nothing to sum: zeros")
    groups, cg, og, win, itemsize = call.groups, call.cg, call.og, call.win, call.itemsize
    n_threads = PC.conv_threads(2.0 * call.grad.size * call.kg)
    volume = _gemm_only(call, forced)
    fallback = _weight_gradient_after_direct(call, None if forced == "direct" else forced,
                                             n_threads)
    if forced == "direct" or (forced is None and not volume and PW.use_direct_weight(
            groups, cg, og, win, itemsize, call.nhwc, machine().isa_level)):
        vector = machine().vector_elements(itemsize)
        split = PW.direct_weight_split(groups, cg, og, win, itemsize, n_threads, vector)
        if split is not None:
            scratch = n_threads * PW.direct_weight_unit_bytes(og, win, itemsize, vector, split)
            return Plan(call.op, "direct", n_threads, scratch,
                        "forced" if forced else "thin per-group GEMMs: direct sums",
                        {"split": split}, fallback=fallback)
        if forced:
            raise _refuse(call, forced, "one row's band exceeds the direct kernels' scratch "
                                        "bound (huge dilations)")
    return fallback


def _weight_gradient_after_direct(call: Call, forced, n_threads: int) -> Plan:
    """The weight gradient's plan where the direct kernels do not run it."""
    n, groups, cg, og, kg = call.n, call.groups, call.cg, call.og, call.kg
    win, nhwc, itemsize, x = call.win, call.nhwc, call.itemsize, call.x
    isa_level = machine().isa_level
    in_place = in_place_1x1(x, win, nhwc, cg)
    channels_contiguous = x.strides[-1] == x.itemsize
    if call.volume or win.pad_mode:
        return _gemm_weight_gradient(call, forced, n_threads, in_place, isa_level)
    if forced == "taps" and not (nhwc and not in_place and channels_contiguous):
        raise _refuse(call, forced, "it runs NHWC weight gradients of windows other than an "
                                    "unpadded 1x1 at stride 1, the input's channels "
                                    "contiguous")
    if forced == "taps" or (forced is None and PW.use_weight_taps(nhwc, cg, in_place, isa_level,
                                                                channels_contiguous)):
        out_block, tap_block, per_call, band = PW.grad_weight_taps(
            n, groups, og, win.kernel_h, win.kernel_h * win.kernel_w, win.out_h, win.out_w,
            n_threads)
        terms = (per_call * win.out_h if band >= win.out_h else band) * win.out_w
        scratch = (_scratch(n_threads, _direct.THIN_TERMS * out_block, itemsize=itemsize)
                   + _scratch(n_threads, 2 * terms, itemsize=8))
        return Plan(call.op, "taps", n_threads, scratch,
                    "forced" if forced else "NHWC: each tap a thin GEMM",
                    {"split": (cg, out_block), "taps_split": (tap_block, per_call, band)})
    return _gemm_weight_gradient(call, forced, n_threads, in_place, isa_level)


def _gemm_weight_gradient(call: Call, forced, n_threads: int, in_place: bool,
                          isa_level: int) -> Plan:
    """Unrolled tiles and GEMM: split by input channels (NCHW, where they
    split evenly), else by tiles of positions into per-thread sums, or by
    blocks of output channels."""
    n, groups, cg, og, kg = call.n, call.groups, call.cg, call.og, call.kg
    win, nhwc, itemsize, c_out = call.win, call.nhwc, call.itemsize, call.rows
    taps, n_pos = win.n_taps, win.n_out
    # NCHW: by input channels where they split evenly (no per-thread sums of
    # the whole gradient to reduce, no tile unrolled twice)
    by_channels = None if nhwc else PW.grad_weight_channels(
        n, groups, og, cg, taps, n_pos, itemsize, n_threads, in_place)
    thin = False
    if by_channels is not None:
        tile, block, per_tile, transposed = by_channels
        sums = False
        thin_ok = per_tile == 1
        if forced is None:
            thin = thin_ok and PW.use_thin_weight_channels(og, tile, in_place, isa_level)
        # per thread: the unrolled chunk and the transposed part; shared: the
        # gathered grad_output rows of a set of images
        buffers = (block * taps * (tile + og), c_out * tile)
    else:
        if forced == "thin_gemm" and not nhwc:
            raise _refuse(call, forced, "NCHW weight gradients run it only where the input "
                                        "channels split into chunks")
        transposed = False
        per_tile = 1 if forced == "thin_gemm" else PW.grad_weight_images(
            n, groups, og, kg, n_pos, itemsize, n_threads, c_out, in_place) or 1
        if per_tile > 1:
            tile, block, sums = per_tile * n_pos, og, True
            buffers = ((kg + og) * tile, c_out * kg)
        else:
            # (BLAS's GEMMs get two blocks a thread: one changed bits under
            # concurrent calls; a forced kernel says which GEMM runs)
            tile, block, sums = PW.grad_weight(
                n, groups, og, kg, n_pos, itemsize, n_threads, c_out, in_place,
                isa_level if nhwc else -1, None if forced is None else forced == "thin_gemm")
            buffers = (kg * tile, (c_out * kg) if sums else 0)
            transposed = sums and not nhwc and PW.transposed_sums(og, kg, itemsize,
                                                                 tile == n_pos)
        thin_ok = nhwc and per_tile == 1
        if forced is None and thin_ok:
            thin = PW.use_thin_weight(tile, itemsize, isa_level)
    if forced == "thin_gemm":
        if not thin_ok:
            raise _refuse(call, forced, "these channels go by sets of whole images, "
                                        "which the thin GEMM does not run")
        thin = True
    if thin and by_channels is not None:
        transposed = False   # (the thin GEMMs write the gradient in place)
    scratch = _scratch(n_threads, *buffers, _direct.THIN_TERMS * og if thin else 0,
                       itemsize=itemsize)
    why = ("forced" if forced else "by chunks of input channels" if by_channels is not None
           else "per-thread sums" if sums else "by blocks of output channels")
    params = {"split": (tile, block), "in_place": in_place, "images_per_tile": per_tile,
              "transposed": transposed, "thin": thin}
    if by_channels is not None:
        params["by_channels"] = True
    else:
        params["per_thread_sums"] = sums
    return Plan(call.op, "thin_gemm" if thin else "gemm", n_threads, scratch, why, params)


PLANNERS: dict[str, Callable[[Call], Plan]] = {
    "im2col": plan_im2col,
    "col2im": plan_col2im,
    "conv2d": plan_conv2d,
    "conv_transpose2d": plan_input_gradient,
    "conv2d_input": plan_input_gradient,
    "conv2d_weight": plan_weight_gradient,
}
