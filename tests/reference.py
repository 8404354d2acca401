"""Independent reference implementations, for tests only.

Written from the definitions with NumPy slicing, sliding_window_view and
einsum, in float64, NCHW; they share no code with fastim2col. NHWC is tested
by transposing into and out of NCHW.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def pads_of(padding, kernel, dilation, stride=(1, 1)):
    """(top, bottom, left, right) for an int / pair / 'valid' / 'same' padding."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        th, tw = dilation[0] * (kernel[0] - 1), dilation[1] * (kernel[1] - 1)
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    return (ph, ph, pw, pw)


def _pair(v):
    return (v, v) if np.isscalar(v) else tuple(v)


def _padded(x, pads):
    t, b, l, r = pads
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)))


def out_hw(h, w, kernel, stride, pads, dilation):
    kh, kw = kernel
    ho = (h + pads[0] + pads[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + pads[2] + pads[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ho, wo


def im2col(x, kernel, stride=1, padding=0, dilation=1):
    """x (N, C, H, W) -> (N, C*kh*kw, L), rows (c, i, j), by slicing per (i, j)."""
    kernel, stride, dilation = _pair(kernel), _pair(stride), _pair(dilation)
    x = np.asarray(x, dtype=np.float64)
    n, c, h, w = x.shape
    pads = pads_of(padding, kernel, dilation)
    ho, wo = out_hw(h, w, kernel, stride, pads, dilation)
    xp = _padded(x, pads)
    cols = np.zeros((n, c, kernel[0], kernel[1], ho * wo))
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            r0, c0 = i * dilation[0], j * dilation[1]
            patch = xp[:, :, r0:r0 + stride[0] * (ho - 1) + 1:stride[0],
                       c0:c0 + stride[1] * (wo - 1) + 1:stride[1]]
            cols[:, :, i, j, :] = patch.reshape(n, c, ho * wo)
    return cols.reshape(n, c * kernel[0] * kernel[1], ho * wo)


def col2im(cols, output_size, kernel, stride=1, padding=0, dilation=1):
    """Adjoint of im2col by naive scatter-add: (N, C*kh*kw, L) -> (N, C, H, W)."""
    kernel, stride, dilation = _pair(kernel), _pair(stride), _pair(dilation)
    cols = np.asarray(cols, dtype=np.float64)
    h, w = output_size
    pads = pads_of(padding, kernel, dilation)
    ho, wo = out_hw(h, w, kernel, stride, pads, dilation)
    n = cols.shape[0]
    c = cols.shape[1] // (kernel[0] * kernel[1])
    cols = cols.reshape(n, c, kernel[0], kernel[1], ho, wo)
    xp = np.zeros((n, c, h + pads[0] + pads[1], w + pads[2] + pads[3]))
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            for oh in range(ho):
                for ow in range(wo):
                    xp[:, :, oh * stride[0] + i * dilation[0],
                       ow * stride[1] + j * dilation[1]] += cols[:, :, i, j, oh, ow]
    return xp[:, :, pads[0]:pads[0] + h, pads[2]:pads[2] + w]


def windows(x, kernel, stride, pads, dilation):
    """(N, C, Ho, Wo, kh, kw) view of all windows, via sliding_window_view."""
    xp = _padded(np.asarray(x, dtype=np.float64), pads)
    span = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
    v = sliding_window_view(xp, span, axis=(2, 3))
    return v[:, :, ::stride[0], ::stride[1], ::dilation[0], ::dilation[1]]


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.functional.conv2d semantics, NCHW, via windows + einsum."""
    stride, dilation = _pair(stride), _pair(dilation)
    weight = np.asarray(weight, dtype=np.float64)
    c_out, cg, kh, kw = weight.shape
    pads = pads_of(padding, (kh, kw), dilation)
    win = windows(x, (kh, kw), stride, pads, dilation)
    n, c, ho, wo = win.shape[:4]
    win = win.reshape(n, groups, c // groups, ho, wo, kh, kw)
    wg = weight.reshape(groups, c_out // groups, cg, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", win, wg).reshape(n, c_out, ho, wo)
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)[:, None, None]
    return out


def conv2d_weight_grad(x, weight_shape, grad_out, stride=1, padding=0, dilation=1, groups=1):
    """d/dw sum(conv2d(x, w) * grad_out), via windows + einsum."""
    stride, dilation = _pair(stride), _pair(dilation)
    c_out, cg, kh, kw = weight_shape
    pads = pads_of(padding, (kh, kw), dilation)
    win = windows(x, (kh, kw), stride, pads, dilation)
    n, c, ho, wo = win.shape[:4]
    win = win.reshape(n, groups, c // groups, ho, wo, kh, kw)
    go = np.asarray(grad_out, dtype=np.float64).reshape(n, groups, c_out // groups, ho, wo)
    return np.einsum("ngchwij,ngohw->gocij", win, go).reshape(weight_shape)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    """torch.nn.functional.conv_transpose2d semantics, NCHW, by scatter-add
    of each kernel tap's contribution into a padded output."""
    stride, dilation = _pair(stride), _pair(dilation)
    padding, output_padding = _pair(padding), _pair(output_padding)
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    n, c_in, h, w = x.shape
    _, og, kh, kw = weight.shape
    c_out = og * groups
    ho = (h - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + output_padding[0] + 1
    wo = (w - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + output_padding[1] + 1
    full = np.zeros((n, c_out, ho + 2 * padding[0] + stride[0] + dilation[0] * kh,
                     wo + 2 * padding[1] + stride[1] + dilation[1] * kw))
    ig = c_in // groups
    for g in range(groups):
        xg = x[:, g * ig:(g + 1) * ig]
        wg = weight[g * ig:(g + 1) * ig]
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dilation[0], j * dilation[1]
                full[:, g * og:(g + 1) * og,
                     r0:r0 + stride[0] * (h - 1) + 1:stride[0],
                     c0:c0 + stride[1] * (w - 1) + 1:stride[1]] += np.einsum(
                         "nchw,co->nohw", xg, wg[:, :, i, j])
    out = full[:, :, padding[0]:padding[0] + ho, padding[1]:padding[1] + wo]
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)[:, None, None]
    return out


def conv2d_input_grad(input_shape, weight, grad_out, stride=1, padding=0, dilation=1, groups=1):
    """d/dx sum(conv2d(x, w) * grad_out) for the NCHW input shape, by scatter-add."""
    stride, dilation = _pair(stride), _pair(dilation)
    weight = np.asarray(weight, dtype=np.float64)
    go = np.asarray(grad_out, dtype=np.float64)
    n, c, h, w = input_shape
    c_out, cg, kh, kw = weight.shape
    pads = pads_of(padding, (kh, kw), dilation)
    ho, wo = go.shape[2:]
    og = c_out // groups
    span_h = pads[0] + pads[1] + h + stride[0] + dilation[0] * kh
    span_w = pads[2] + pads[3] + w + stride[1] + dilation[1] * kw
    gp = np.zeros((n, c, span_h, span_w))
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dilation[0], j * dilation[1]
                gp[:, g * cg:(g + 1) * cg,
                   r0:r0 + stride[0] * (ho - 1) + 1:stride[0],
                   c0:c0 + stride[1] * (wo - 1) + 1:stride[1]] += np.einsum(
                       "nohw,oc->nchw", go[:, g * og:(g + 1) * og],
                       weight[g * og:(g + 1) * og, :, i, j])
    return gp[:, :, pads[0]:pads[0] + h, pads[2]:pads[2] + w]


def to_nhwc(a):
    return np.moveaxis(a, -3, -1)


def to_nchw(a):
    return np.moveaxis(a, -1, -3)


def weight_to_nhwc(w):
    """(O, C, kh, kw) -> (O, kh, kw, C)."""
    return np.moveaxis(w, 1, 3)


def cols_to_nhwc(cols, c, kernel):
    """NCHW columns (N, C*kh*kw, L) -> NHWC columns (N, L, kh*kw*C)."""
    n, _, length = cols.shape
    kh, kw = kernel
    return cols.reshape(n, c, kh, kw, length).transpose(0, 4, 2, 3, 1).reshape(
        n, length, kh * kw * c)
