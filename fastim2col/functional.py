"""The public convolution API, with torch.nn.functional's names and semantics
on NumPy arrays. Each function normalizes its arguments (fastim2col._args),
plans the work split (fastim2col._plan) and calls one Cython kernel."""
from __future__ import annotations

import numpy as np

from . import _args, _plan
from ._args import ArrayLike, IntPair, Layout, Padding
from . import _conv, _depthwise, _direct, _im2col
from ._threads import blas_single_threaded

__all__ = ["im2col", "col2im", "conv2d", "conv_transpose2d"]


def _squeeze(result: np.ndarray, unbatched: bool) -> np.ndarray:
    return result[0] if unbatched else result


def _batched_out(out, unbatched: bool):
    return out[None] if (unbatched and isinstance(out, np.ndarray)) else out


def im2col(x: ArrayLike, kernel_size: IntPair, stride: IntPair = 1, padding: IntPair = 0,
           dilation: IntPair = 1, *, layout: Layout = "NCHW",
           out: np.ndarray | None = None) -> np.ndarray:
    """Unroll sliding windows of ``x`` into columns, like ``torch.nn.functional.unfold``.

    NCHW: x ``(N, C, H, W)`` gives ``(N, C*kh*kw, L)``, rows ordered (c, i, j) and
    L = Ho*Wo output positions in row-major order; unbatched ``(C, H, W)`` gives
    ``(C*kh*kw, L)``. NHWC: x ``(N, H, W, C)`` gives ``(N, L, kh*kw*C)``, columns
    ordered (i, j, c).
    """
    nhwc = _args.check_layout(layout)
    x = _args.as_array(x, "x")
    dtype = _args.compute_dtype(x)
    x, unbatched = _args.batched(x, "x")
    n, c, h, w = _args.image_dims(x.shape, nhwc)
    win = _args.window((h, w), kernel_size, stride, padding, dilation, allow_strings=False)
    n_pos = win.out_h * win.out_w
    kk = win.kernel_h * win.kernel_w
    shape = (n, n_pos, kk * c) if nhwc else (n, c * kk, n_pos)
    x = _args.strided_operand(x, dtype)
    res = _args.output(_batched_out(out, unbatched), shape, dtype, (x,), "im2col")
    if res.size:
        n_threads = _plan.copy_threads(res.nbytes)
        tile = _plan.im2col_tile(n if nhwc else n * c, n_pos, n_threads)
        _im2col.im2col(x, res, geom=tuple(win), nhwc=nhwc, tile=tile, n_threads=n_threads)
    return out if out is not None else _squeeze(res, unbatched)


def col2im(cols: ArrayLike, output_size: IntPair, kernel_size: IntPair, stride: IntPair = 1,
           padding: IntPair = 0, dilation: IntPair = 1, *, layout: Layout = "NCHW",
           out: np.ndarray | None = None) -> np.ndarray:
    """Sum columns back into images, like ``torch.nn.functional.fold``: the adjoint
    of :func:`im2col`, overlapping windows adding up.

    NCHW: cols ``(N, C*kh*kw, L)`` gives ``(N, C, H, W)`` with ``(H, W) = output_size``;
    unbatched ``(C*kh*kw, L)`` gives ``(C, H, W)``. NHWC: cols ``(N, L, kh*kw*C)``
    gives ``(N, H, W, C)``.
    """
    nhwc = _args.check_layout(layout)
    cols = _args.as_array(cols, "cols")
    dtype = _args.compute_dtype(cols)
    if cols.ndim not in (2, 3):
        raise ValueError(f"cols must be 3-d (batched) or 2-d (unbatched), got {cols.ndim}-d "
                         f"with shape {cols.shape}")
    unbatched = cols.ndim == 2
    if unbatched:
        cols = cols[None]
    out_hw = _args.pair(output_size, "output_size", 1)
    win = _args.window(out_hw, kernel_size, stride, padding, dilation, allow_strings=False)
    kk = win.kernel_h * win.kernel_w
    n_pos = win.out_h * win.out_w
    n = cols.shape[0]
    rows, length = (cols.shape[2], cols.shape[1]) if nhwc else (cols.shape[1], cols.shape[2])
    if rows % kk:
        axis = "last" if nhwc else "second"
        raise ValueError(f"col2im: the {axis} dimension of cols ({rows}) must be C*kh*kw, "
                         f"a multiple of kh*kw={kk}")
    if length != n_pos:
        raise ValueError(f"col2im: cols has L={length} positions, but output_size {out_hw} with "
                         f"these window parameters gives {win.out_h}x{win.out_w}={n_pos}")
    c = rows // kk
    shape = _args.image_shape(n, c, out_hw[0], out_hw[1], nhwc)
    cols = _args.contiguous_operand(cols, dtype)
    res = _args.output(_batched_out(out, unbatched), shape, dtype, (cols,), "col2im")
    if res.size:
        n_threads = _plan.copy_threads(cols.nbytes)
        rows_per_band = _plan.col2im_rows(n, win, n_threads)
        _im2col.col2im(cols, res, geom=tuple(win), nhwc=nhwc, rows_per_band=rows_per_band,
                       n_threads=n_threads)
    return out if out is not None else _squeeze(res, unbatched)


def _conv_setup(x: np.ndarray, weight: np.ndarray, groups, nhwc: bool, names=("x", "weight")
                ) -> tuple[np.ndarray, bool, tuple[int, int, int, int], tuple[int, int, int, int], int]:
    """Shared checks of conv2d-like calls: (x batched, unbatched, N, C, H, W,
    weight rows, channels per group, kh, kw, groups)."""
    x, unbatched = _args.batched(x, names[0])
    if weight.ndim != 4:
        raise ValueError(f"{names[1]} must be 4-d, got {weight.ndim}-d with shape {weight.shape}")
    groups = _args.positive_int(groups, "groups")
    n, c, h, w = _args.image_dims(x.shape, nhwc)
    rows, cg, kh, kw = _args.weight_dims(weight.shape, nhwc)
    return x, unbatched, (n, c, h, w), (rows, cg, kh, kw), groups


def _is_direct(x: np.ndarray, win: _args.Window, nhwc: bool, cg: int) -> bool:
    """1x1, stride 1, unpadded: the input already is the GEMM operand, if its
    strides let BLAS read it as a matrix with a valid leading dimension."""
    if (win.kernel_h, win.kernel_w, win.stride_h, win.stride_w, win.pad_h, win.pad_w) != (1, 1, 1, 1, 0, 0):
        return False
    if (win.out_h, win.out_w) != (win.in_h, win.in_w):
        return False
    item = x.itemsize
    if nhwc:
        s_h, s_w, s_c = (s // item for s in x.strides[1:])
        return s_c == 1 and s_h == win.in_w * s_w and max(1, cg) <= s_w <= _args.BLAS_INT_MAX
    s_c, s_h, s_w = (s // item for s in x.strides[1:])
    n_pos = win.in_h * win.in_w
    return s_w == 1 and s_h == win.in_w and n_pos <= s_c <= _args.BLAS_INT_MAX


def _check_bias(bias, n: int, name: str = "bias"):
    if bias is None:
        return None
    if bias.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one value per output channel), "
                         f"got {bias.shape}")
    return bias


def conv2d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntPair = 1, padding: Padding = 0, dilation: IntPair = 1, groups: int = 1,
           *, layout: Layout = "NCHW", out: np.ndarray | None = None) -> np.ndarray:
    """2-D convolution (cross-correlation), like ``torch.nn.functional.conv2d``.

    NCHW: x ``(N, C_in, H, W)`` or unbatched ``(C_in, H, W)``, weight
    ``(C_out, C_in/groups, kh, kw)``, result ``(N, C_out, Ho, Wo)``.
    NHWC: x ``(N, H, W, C_in)``, weight ``(C_out, kh, kw, C_in/groups)``,
    result ``(N, Ho, Wo, C_out)``. padding: int, pair, ``"valid"`` or ``"same"``.
    """
    nhwc = _args.check_layout(layout)
    x = _args.as_array(x, "x")
    weight = _args.as_array(weight, "weight")
    bias = None if bias is None else _args.as_array(bias, "bias")
    dtype = _args.compute_dtype(x, weight, bias)
    x, unbatched, (n, c, h, w), (c_out, cg, kh, kw), groups = _conv_setup(x, weight, groups, nhwc)
    if c % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide both the input channels ({c}) and the "
                         f"output channels ({c_out})")
    if cg != c // groups:
        raise ValueError(f"weight expects {cg} input channels per group, but x has {c} channels "
                         f"in {groups} group(s), i.e. {c // groups} per group")
    _check_bias(bias, c_out)
    win = _args.window((h, w), (kh, kw), stride, padding, dilation, allow_strings=True)
    n_pos = win.out_h * win.out_w
    og, kg = c_out // groups, cg * kh * kw
    _args.check_blas("conv2d", positions=n_pos, out_channels=c_out, window_size=kg)
    x = _args.strided_operand(x, dtype)
    w2 = _args.contiguous_operand(weight, dtype).reshape(c_out, kg)
    bias = None if bias is None else _args.contiguous_operand(bias, dtype)
    shape = _args.image_shape(n, c_out, win.out_h, win.out_w, nhwc)
    res = _args.output(_batched_out(out, unbatched), shape, dtype, (x, weight, bias), "conv2d")
    if res.size:
        n_threads = _plan.conv_threads(2.0 * res.size * kg)
        direct_split = None
        if kg and _plan.use_direct(groups, cg, og, win, nhwc, dtype.itemsize):
            direct_split = _plan.direct_split(n, groups, cg, og, win, dtype.itemsize, n_threads,
                                              _direct.vector_elements(dtype.itemsize))
        if kg == 0:   # no input channels: only the bias remains
            res[...] = 0 if bias is None else (bias if nhwc else bias[:, None, None])
        elif direct_split is not None:
            _direct.direct_forward(x.transpose(0, 3, 1, 2) if nhwc else x, w2, bias, res,
                                   groups=groups, geom=tuple(win), split=direct_split,
                                   n_threads=n_threads, nhwc=nhwc)
        elif nhwc and cg == 1 and groups > 1:
            # Depthwise NHWC: a direct kernel along channel vectors.
            _depthwise.depthwise_forward(x, w2.T.copy(), bias, res, multiplier=og,
                                         geom=tuple(win), n_threads=n_threads)
        else:
            direct = _is_direct(x, win, nhwc, cg)
            images = _plan.forward_images(n, groups, og, kg, n_pos, dtype.itemsize, n_threads,
                                          direct)
            per_tile = 1
            if images is not None:
                per_tile, block = images
                split = (per_tile * n_pos, block)
                _plan.check_scratch(n_threads, (kg + block) * split[0], itemsize=dtype.itemsize)
            else:
                split = _plan.forward(n, groups, og, kg, n_pos, dtype.itemsize, n_threads,
                                      direct, nhwc)
                _plan.check_scratch(n_threads, kg * split[0], itemsize=dtype.itemsize)
            thin = per_tile == 1 and _plan.use_thin_forward(nhwc, split[0], split[1], kg,
                                                        dtype.itemsize, _direct.best_isa_level())
            _plan.check_scratch(n_threads, _direct.THIN_TERMS * split[1] if thin else 0,
                                itemsize=dtype.itemsize)
            with blas_single_threaded:
                _conv.gemm_forward(x, w2, bias, res, shape=(n, c, c_out, groups),
                                   geom=tuple(win), split=split, in_place=direct, nhwc=nhwc,
                                   n_threads=n_threads, images_per_tile=per_tile, thin=thin)
    return out if out is not None else _squeeze(res, unbatched)


def _direct_input_gradient(grad, weight, bias, res, groups, win, n_threads, nhwc) -> bool:
    """With stride 1, conv2d's input gradient is itself a conv2d: of grad with
    the weights flipped in space and transposed per group (the kernels read
    them so, no copy: these weights can be the largest operand), padded by
    dilation * (kernel - 1) - padding (the rows and columns past grad's end,
    which output_padding adds, read zeros). Computed by the direct kernels
    where the planner picks them; False (nothing done) otherwise."""
    kh, kw = win.kernel_h, win.kernel_w
    pad_h = win.dilation_h * (kh - 1) - win.pad_h
    pad_w = win.dilation_w * (kw - 1) - win.pad_w
    if (win.stride_h, win.stride_w) != (1, 1) or pad_h < 0 or pad_w < 0:
        return False
    rows, c = weight.shape[0], res.shape[3 if nhwc else 1]
    og, cg = rows // groups, c // groups
    if og * cg * kh * kw * res.itemsize > _plan.DIRECT_FLIPPED_WEIGHT_BYTES:
        return False
    flipped = _args.Window(win.out_h, win.out_w, win.in_h, win.in_w, kh, kw, 1, 1,
                           pad_h, pad_w, win.dilation_h, win.dilation_w)
    if not _plan.use_direct_input(groups, og, cg, flipped, nhwc, res.itemsize):
        return False
    split = _plan.direct_split(res.shape[0], groups, og, cg, flipped, res.itemsize, n_threads,
                               _direct.vector_elements(res.itemsize))
    if split is None:
        return False
    _direct.direct_forward(grad.transpose(0, 3, 1, 2) if nhwc else grad, weight, bias, res,
                           groups=groups, geom=tuple(flipped), split=split, n_threads=n_threads,
                           flip_weights=True, nhwc=nhwc)
    return True


def _taps_input_gradient(grad, weight, bias, res, dims, win, groups, n_threads) -> None:
    """The NHWC input gradient tap by tap (src/_conv.pyx grad_input_taps),
    split as _plan.grad_input_taps says."""
    n, c, rows = dims
    cg, og = c // groups, rows // groups
    band, block, per_set, copy_ld = _plan.grad_input_taps(
        n, groups, cg, og, weight.shape[1], win, res.itemsize, n_threads,
        _direct.vector_elements(res.itemsize))
    positions = per_set * band * win.in_w
    _plan.check_scratch(n_threads, _direct.THIN_TERMS * positions, og * copy_ld,
                        itemsize=res.itemsize)
    _plan.check_scratch(n_threads, 2 * positions, itemsize=8)   # the offset tables
    _conv.taps_grad_input(grad, weight, bias, res, shape=(n, c, rows, groups), geom=tuple(win),
                          split=(band, block), images_per_set=per_set, weights_copy_ld=copy_ld,
                          n_threads=n_threads)


def _input_gradient(grad, weight, bias, res, dims, win, groups, nhwc):
    """res = the input gradient of conv2d (or conv_transpose2d), by the kernel
    the planner picks (tap by tap, element by element, the direct kernels, or
    GEMM + fold): grad (N, rows, ...) C-contiguous, weight (rows, cg*kh*kw)."""
    n, c, rows = dims
    cg = c // groups
    kg = cg * win.kernel_h * win.kernel_w
    n_threads = _plan.conv_threads(2.0 * grad.size * kg)
    direct = (win.kernel_h, win.kernel_w, win.stride_h, win.stride_w, win.pad_h, win.pad_w,
              win.out_h, win.out_w) == (1, 1, 1, 1, 0, 0, win.in_h, win.in_w)
    isa_level = _direct.best_isa_level()
    if _plan.use_taps(nhwc, cg, direct, isa_level):
        _taps_input_gradient(grad, weight, bias, res, dims, win, groups, n_threads)
        return
    og = rows // groups
    if _plan.use_few_channels(nhwc, cg, og, direct, win,
                              _direct.vector_elements(res.itemsize), isa_level):
        # the weights as (groups, taps, cg, og), each tap's columns contiguous,
        # starting on a cache line (the kernel reads them in vectors)
        wt = _args.line_aligned_copy(weight.reshape(groups, og, -1, cg).transpose(0, 2, 3, 1))
        band = _plan.grad_input_few(n, groups, og, win, res.itemsize, n_threads)
        # grad_output's rows are copied (to start on cache lines) unless each
        # group's channels of every pixel already do
        copy = grad.ctypes.data % _args.CACHE_LINE or (og * res.itemsize) % _args.CACHE_LINE
        _conv.elementwise_grad_input(grad, wt, bias, res, shape=(n, c, rows, groups),
                                     geom=tuple(win), band=band, copy_rows=bool(copy),
                                     n_threads=n_threads)
        return
    if _direct_input_gradient(grad, weight, bias, res, groups, win, n_threads, nhwc):
        return
    n_pos = win.out_h * win.out_w
    images = _plan.grad_input_images(n, groups, cg, rows // groups, kg, n_pos, res.itemsize,
                                     n_threads, nhwc, direct)
    per_tile = 1
    if images is not None:
        per_tile, block = images
        split = (per_tile * n_pos, block)
        scratch = (kg + rows // groups) * split[0]
    else:
        thin_fold = _plan.use_thin_positions(nhwc, kg, res.itemsize, isa_level)
        split = _plan.grad_input(n, groups, cg, kg, win, res.itemsize, n_threads, nhwc, direct,
                                 thin_fold)
        scratch = kg * split[0]
    thin = _plan.use_thin_gemm(split[0], res.itemsize, isa_level)
    unit_rows = split[1] * win.kernel_h * win.kernel_w   # a unit's channels x taps
    thin_positions = not thin and _plan.use_thin_positions(nhwc, unit_rows, res.itemsize,
                                                           isa_level)
    thin_scratch = unit_rows if thin_positions else split[0] if thin else 0
    _plan.check_scratch(n_threads, scratch, _direct.THIN_TERMS * thin_scratch,
                        itemsize=res.itemsize)
    transposed = not nhwc and not thin_positions and (thin or _plan.grad_input_transposed(
        split[0], split[1] * win.kernel_h * win.kernel_w, res.itemsize))
    with blas_single_threaded:
        _conv.gemm_grad_input(grad, weight, bias, res, shape=(n, c, rows, groups),
                              geom=tuple(win), split=split, in_place=direct, nhwc=nhwc,
                              n_threads=n_threads, images_per_tile=per_tile,
                              transposed=transposed, thin=thin, thin_positions=thin_positions)


def conv_transpose2d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
                     stride: IntPair = 1, padding: IntPair = 0, output_padding: IntPair = 0,
                     groups: int = 1, dilation: IntPair = 1, *, layout: Layout = "NCHW",
                     out: np.ndarray | None = None) -> np.ndarray:
    """Transposed 2-D convolution, like ``torch.nn.functional.conv_transpose2d``
    (the input gradient of conv2d, plus a bias).

    NCHW: x ``(N, C_in, H, W)``, weight ``(C_in, C_out/groups, kh, kw)``, result
    ``(N, C_out, Ho, Wo)`` with ``Ho = (H-1)*stride - 2*padding + dilation*(kh-1)
    + output_padding + 1``. NHWC: x ``(N, H, W, C_in)``, weight
    ``(C_in, kh, kw, C_out/groups)``, result ``(N, Ho, Wo, C_out)``.
    """
    nhwc = _args.check_layout(layout)
    x = _args.as_array(x, "x")
    weight = _args.as_array(weight, "weight")
    bias = None if bias is None else _args.as_array(bias, "bias")
    dtype = _args.compute_dtype(x, weight, bias)
    x, unbatched, (n, c_in, h, w), (w_rows, og, kh, kw), groups = _conv_setup(x, weight, groups, nhwc)
    if w_rows != c_in:
        raise ValueError(f"weight must have C_in={c_in} rows (its first dimension), got {w_rows}")
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels ({c_in})")
    c_out = og * groups
    _check_bias(bias, c_out)
    kh, kw = _args.pair((kh, kw), "kernel_size", 1)
    sh, sw = _args.pair(stride, "stride", 1)
    ph, pw = _args.pair(padding, "padding", 0)
    dh, dw = _args.pair(dilation, "dilation", 1)
    oph, opw = _args.pair(output_padding, "output_padding", 0)
    if not (oph < max(sh, dh) and opw < max(sw, dw)):
        raise ValueError(f"output_padding {(oph, opw)} must be smaller than either stride "
                         f"{(sh, sw)} or dilation {(dh, dw)}")
    out_h = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    out_w = (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"conv_transpose2d: padding {(ph, pw)} is too large, the output size "
                         f"would be {(out_h, out_w)}")
    # The convolution whose input gradient this is: input out_h x out_w, output h x w.
    win = _args.Window(out_h, out_w, h, w, kh, kw, sh, sw, ph, pw, dh, dw)
    kg = og * kh * kw
    _args.check_blas("conv_transpose2d", positions=max(h * w, out_h * out_w),
                     in_channels=c_in, out_channels=c_out, window_size=kg)
    grad = _args.contiguous_operand(x, dtype)
    w2 = _args.contiguous_operand(weight, dtype).reshape(c_in, kg)
    bias = None if bias is None else _args.contiguous_operand(bias, dtype)
    shape = _args.image_shape(n, c_out, out_h, out_w, nhwc)
    res = _args.output(_batched_out(out, unbatched), shape, dtype, (x, weight, bias),
                       "conv_transpose2d")
    if res.size:
        if kg == 0 or grad.size == 0:   # nothing to scatter: only the bias remains
            res[...] = 0 if bias is None else (bias if nhwc else bias[:, None, None])
        else:
            _input_gradient(grad, w2, bias, res, (n, c_out, c_in), win, groups, nhwc)
    return out if out is not None else _squeeze(res, unbatched)
