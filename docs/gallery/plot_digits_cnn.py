"""
Training a CNN on handwritten digits
====================================

``examples/train_digits.py`` trains a small convolutional network written in
NumPy on scikit-learn's bundled 8x8 digits (1797 images, nothing
downloaded). Every convolution, forward and backward, runs through
fastim2col: :func:`fastim2col.conv2d` forward,
:func:`fastim2col.grad.conv2d_input` and :func:`fastim2col.grad.conv2d_weight`
backward. Here it trains for a few epochs and plots the loss and the
accuracy after each epoch.
"""
# %%
# Import the example script from the repository's ``examples/`` folder.
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt

# sphinx-gallery runs this from docs/gallery/; by hand, run it from the repo root.
here = Path.cwd().resolve()
examples = next(d / "examples" for d in (here, *here.parents)
                if (d / "examples" / "train_digits.py").is_file())
sys.path.insert(0, str(examples))
import train_digits  # noqa: E402

# %%
# Train: 6 epochs of mini-batches of 32, SGD with momentum. The run is
# deterministic for a seed.
t0 = time.perf_counter()
history = train_digits.train(epochs=6, batch_size=32, lr=0.05, momentum=0.9, seed=0)
print(f"trained in {time.perf_counter() - t0:.1f} s; "
      f"final test accuracy {100 * history.test_accuracy[-1]:.1f}%")

# %%
# The loss falls and both accuracies rise epoch by epoch.
epochs = range(1, len(history.loss) + 1)
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
ax_loss.plot(epochs, history.loss, "o-")
ax_loss.set_xlabel("epoch")
ax_loss.set_ylabel("training loss (cross-entropy)")
ax_loss.set_yscale("log")
ax_acc.plot(epochs, [100 * a for a in history.train_accuracy], "o-", label="train")
ax_acc.plot(epochs, [100 * a for a in history.test_accuracy], "s-", label="test")
ax_acc.set_xlabel("epoch")
ax_acc.set_ylabel("accuracy (%)")
ax_acc.legend()
fig.suptitle("A NumPy CNN trained with fastim2col's convolutions")
fig.tight_layout()

# %%
# The data: a few of the held-out test images, 8x8 pixels each, with their labels.
x_train, y_train, x_test, y_test = train_digits.load_data(seed=0)
fig, axes = plt.subplots(1, 8, figsize=(9, 1.6))
for ax, image, label in zip(axes, x_test[:8, 0], y_test[:8]):
    ax.imshow(image, cmap="gray_r")
    ax.set_title(str(label))
    ax.axis("off")
fig.suptitle("test images and their labels")
fig.tight_layout()
