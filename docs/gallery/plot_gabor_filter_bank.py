"""
A Gabor filter bank on a photograph
===================================

A bank of Gabor filters (4 orientations x 2 frequencies) applied to
scikit-image's ``camera`` photograph, which ships with scikit-image.
:func:`fastim2col.conv2d` runs the whole bank as one call (8 output
channels) and each filter alone; :func:`scipy.ndimage.correlate` runs each
filter alone. ``conv2d`` computes a cross-correlation, as ``correlate``
does, so with the same zero padding the responses agree.
"""
# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from scipy import ndimage
from skimage import data, filters, transform

import fastim2col

# A 256x256 float32 version of the 512x512 photograph keeps the build quick.
image = transform.resize(data.camera(), (256, 256), anti_aliasing=True).astype(np.float32)

# %%
# The filter bank: real parts of Gabor kernels, each zero-padded to a common
# odd size so that they stack into one weight array (C_out, C_in, kh, kw).
thetas = np.arange(4) * np.pi / 4
frequencies = (0.15, 0.3)
kernels = [np.real(filters.gabor_kernel(f, theta=t, sigma_x=3, sigma_y=3))
           for f in frequencies for t in thetas]
size = max(k.shape[0] for k in kernels)
bank = np.zeros((len(kernels), 1, size, size), np.float32)
for i, k in enumerate(kernels):
    off = (size - k.shape[0]) // 2
    bank[i, 0, off:off + k.shape[0], off:off + k.shape[1]] = k
print(f"{len(kernels)} filters of {size}x{size}, image {image.shape}")

# %%
# One call for the whole bank ("same" padding: responses the size of the image).
responses = fastim2col.conv2d(image[None], bank, padding="same")
print(responses.shape)

# The same with SciPy, filter by filter (constant zero padding, as conv2d pads).
reference = np.stack([ndimage.correlate(image, bank[i, 0], mode="constant")
                      for i in range(len(bank))])
print("largest difference from scipy.ndimage.correlate:",
      float(np.max(np.abs(responses - reference))))

# %%
# The responses: each filter lights up where the image has edges and texture
# of its orientation and frequency.
fig, axes = plt.subplots(3, 4, figsize=(9, 7))
for ax in axes[0, :2]:
    ax.axis("off")
axes[0, 0].imshow(image, cmap="gray")
axes[0, 0].set_title("input")
for ax in axes[0, 2:]:
    ax.axis("off")
for i, k in enumerate(bank[:2, 0]):
    axes[0, 2 + i].imshow(k, cmap="RdBu_r")
    axes[0, 2 + i].set_title(f"kernel {i}")
for i, ax in enumerate(axes[1:].ravel()):
    f, t = frequencies[i // 4], thetas[i % 4]
    ax.imshow(np.abs(responses[i]), cmap="magma")
    ax.set_title(f"f={f}, {np.degrees(t):.0f} deg", fontsize=9)
    ax.axis("off")
fig.tight_layout()


# %%
# Time per filter: one ``conv2d`` call per filter against one
# ``scipy.ndimage.correlate`` call per filter, medians of a few calls.
def median_time(fn, repeat=5):
    fn()                                    # warm up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


ours, scipy_times = [], []
for i in range(len(bank)):
    w = bank[i:i + 1]
    ours.append(median_time(lambda: fastim2col.conv2d(image[None], w, padding="same")))
    scipy_times.append(median_time(
        lambda: ndimage.correlate(image, w[0, 0], mode="constant")))
bank_time = median_time(lambda: fastim2col.conv2d(image[None], bank, padding="same"))
for i, (a, b) in enumerate(zip(ours, scipy_times)):
    print(f"filter {i}: fastim2col {a * 1e3:6.2f} ms   scipy.ndimage {b * 1e3:6.2f} ms"
          f"   ({b / a:.1f}x)")
print(f"whole bank in one conv2d call: {bank_time * 1e3:.2f} ms "
      f"(scipy, filter by filter: {sum(scipy_times) * 1e3:.2f} ms)")

fig, ax = plt.subplots(figsize=(8, 3.2))
idx = np.arange(len(bank))
ax.bar(idx - 0.2, np.array(ours) * 1e3, 0.4, label="fastim2col.conv2d")
ax.bar(idx + 0.2, np.array(scipy_times) * 1e3, 0.4, label="scipy.ndimage.correlate")
ax.set_xticks(idx, [f"{i}" for i in idx])
ax.set_xlabel("filter")
ax.set_ylabel("ms per filter")
ax.set_title(f"{size}x{size} filters on a {image.shape[0]}x{image.shape[1]} image, "
             f"{fastim2col.get_num_threads()} thread(s)")
ax.legend()
fig.tight_layout()
