"""Train a small CNN on scikit-learn's 8x8 handwritten digits, in NumPy.

Every convolution, forward and backward, runs through fastim2col:

* forward:          ``fastim2col.conv2d``
* input gradient:   ``fastim2col.grad.conv2d_input``
* weight gradient:  ``fastim2col.grad.conv2d_weight``
* bias gradient:    ``grad_output.sum(axis=(0, 2, 3))``

Everything else (ReLU, 2x2 max pooling, the dense layer, softmax
cross-entropy, SGD with momentum) is a few lines of plain NumPy each.

Network (NCHW, float32)::

    input      1 x 8 x 8
    conv 3x3   32 x 8 x 8   (padding 1) -> ReLU -> max pool 2x2 -> 32 x 4 x 4
    conv 3x3   64 x 4 x 4   (padding 1) -> ReLU -> max pool 2x2 -> 64 x 2 x 2
    flatten    256
    dense      10 logits    -> softmax cross-entropy

The dataset (1797 images) ships with scikit-learn: nothing is downloaded.

Run it::

    python examples/train_digits.py              # defaults: 15 epochs
    python examples/train_digits.py --epochs 5 --seed 1 --quiet
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

import fastim2col
import fastim2col.grad

DTYPE = np.float32


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

def load_data(seed: int, test_size: float = 0.2):
    """The digits as (x_train, y_train, x_test, y_test), x of shape (N, 1, 8, 8)
    scaled to [0, 1], split stratified by class (so every digit is represented
    in both parts in the same proportion)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(DTYPE)[:, None, :, :]   # pixel values are 0..16
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=seed)
    return x_train, y_train, x_test, y_test


# --------------------------------------------------------------------------
# Layers. Each one caches what its backward pass needs during forward, and
# backward(grad of the output) returns the grad of the input. Layers with
# parameters list them in `params` and their gradients, same order, in `grads`.
# --------------------------------------------------------------------------

class Layer:
    """Base class: by default a layer has no parameters."""
    params: tuple = ()
    grads: tuple = ()


def he_normal(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
    """He (Kaiming) normal initialization: std sqrt(2 / fan_in), suited to ReLU."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(DTYPE)


class Conv2d(Layer):
    """3x3 (or k x k) convolution, stride 1, computed by fastim2col."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 rng: np.random.Generator, padding: int = 1):
        fan_in = in_channels * kernel_size * kernel_size
        self.weight = he_normal(rng, (out_channels, in_channels, kernel_size, kernel_size),
                                fan_in)
        self.bias = np.zeros(out_channels, DTYPE)
        self.padding = padding
        self.params = (self.weight, self.bias)
        self.grads = (np.zeros_like(self.weight), np.zeros_like(self.bias))

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        return fastim2col.conv2d(x, self.weight, self.bias, padding=self.padding)

    def backward(self, grad_out: np.ndarray, need_input_grad: bool = True):
        # Write the parameter gradients into the preallocated arrays (out=...).
        fastim2col.grad.conv2d_weight(self.x, self.weight.shape, grad_out,
                                      padding=self.padding, out=self.grads[0])
        grad_out.sum(axis=(0, 2, 3), out=self.grads[1])
        if not need_input_grad:          # the first layer's input is the data
            return None
        return fastim2col.grad.conv2d_input(self.x.shape, self.weight, grad_out,
                                            padding=self.padding)


class ReLU(Layer):
    """max(x, 0), elementwise."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.mask = x > 0
        return np.where(self.mask, x, DTYPE(0))

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return np.where(self.mask, grad_out, DTYPE(0))


class MaxPool2x2(Layer):
    """2x2 max pooling with stride 2 (H and W must be even).

    Each 2x2 window is gathered into a last axis of length 4 with a reshape and
    a transpose; forward takes its argmax, and backward sends each output's
    gradient back to that one position (the first maximum, on ties).
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        n, c, h, w = x.shape
        self.in_shape = x.shape
        # (N, C, H/2, 2, W/2, 2) -> (N, C, H/2, W/2, 2, 2) -> (N, C, H/2, W/2, 4)
        windows = (x.reshape(n, c, h // 2, 2, w // 2, 2)
                    .transpose(0, 1, 2, 4, 3, 5)
                    .reshape(n, c, h // 2, w // 2, 4))
        self.argmax = windows.argmax(axis=-1)[..., None]
        return np.take_along_axis(windows, self.argmax, axis=-1)[..., 0]

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        n, c, h, w = self.in_shape
        windows = np.zeros((n, c, h // 2, w // 2, 4), grad_out.dtype)
        np.put_along_axis(windows, self.argmax, grad_out[..., None], axis=-1)
        # Undo the forward's reshape/transpose to get back to (N, C, H, W).
        return (windows.reshape(n, c, h // 2, w // 2, 2, 2)
                       .transpose(0, 1, 2, 4, 3, 5)
                       .reshape(n, c, h, w))


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), for the dense layer."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.in_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        return grad_out.reshape(self.in_shape)


class Dense(Layer):
    """Fully connected layer: y = x @ W.T + b, W of shape (out, in) like torch."""

    def __init__(self, in_features: int, out_features: int, rng: np.random.Generator):
        self.weight = he_normal(rng, (out_features, in_features), in_features)
        self.bias = np.zeros(out_features, DTYPE)
        self.params = (self.weight, self.bias)
        self.grads = (np.zeros_like(self.weight), np.zeros_like(self.bias))

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        return x @ self.weight.T + self.bias

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        np.matmul(grad_out.T, self.x, out=self.grads[0])
        grad_out.sum(axis=0, out=self.grads[1])
        return grad_out @ self.weight


class CNN:
    """conv-relu-pool, conv-relu-pool, flatten, dense: 8x8 images to 10 logits."""

    def __init__(self, rng: np.random.Generator, channels=(32, 64), n_classes: int = 10):
        c1, c2 = channels
        self.layers = [
            Conv2d(1, c1, 3, rng), ReLU(), MaxPool2x2(),     # -> c1 x 4 x 4
            Conv2d(c1, c2, 3, rng), ReLU(), MaxPool2x2(),    # -> c2 x 2 x 2
            Flatten(),
            Dense(c2 * 2 * 2, n_classes, rng),
        ]

    @property
    def params(self):
        return [p for layer in self.layers for p in layer.params]

    @property
    def grads(self):
        return [g for layer in self.layers for g in layer.grads]

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_logits: np.ndarray) -> None:
        """Fill every layer's grads from the gradient of the loss w.r.t. the logits."""
        grad = grad_logits
        for layer in reversed(self.layers[1:]):
            grad = layer.backward(grad)
        self.layers[0].backward(grad, need_input_grad=False)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray):
    """Mean cross-entropy of softmax(logits) against integer labels, and its
    gradient w.r.t. the logits: (softmax - one_hot) / batch size."""
    shifted = logits - logits.max(axis=1, keepdims=True)     # for a stable exp
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = -log_probs[np.arange(n), labels].mean()
    grad = np.exp(log_probs)
    grad[np.arange(n), labels] -= 1
    return float(loss), grad / DTYPE(n)


class SGD:
    """SGD with momentum, torch.optim.SGD's update: v = m*v + g; p -= lr*v."""

    def __init__(self, params, lr: float, momentum: float = 0.9):
        self.params = params
        self.lr = DTYPE(lr)
        self.momentum = DTYPE(momentum)
        self.velocity = [np.zeros_like(p) for p in params]

    def step(self, grads) -> None:
        for p, g, v in zip(self.params, grads, self.velocity, strict=True):
            v *= self.momentum
            v += g
            p -= self.lr * v          # in place: the layers hold these arrays


# --------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------

@dataclasses.dataclass
class History:
    """Per-epoch metrics. loss and train_accuracy are averaged over the epoch's
    mini-batches (as the weights were changing); test_accuracy is measured on
    the held-out set after the epoch."""
    loss: list = dataclasses.field(default_factory=list)
    train_accuracy: list = dataclasses.field(default_factory=list)
    test_accuracy: list = dataclasses.field(default_factory=list)


def progress_bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // total
    return f"[{'#' * filled}{'.' * (width - filled)}] {done:>{len(str(total))}}/{total}"


def accuracy(model: CNN, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model.forward(x[start:start + batch_size])
        correct += int((logits.argmax(axis=1) == y[start:start + batch_size]).sum())
    return correct / len(x)


def train(epochs: int = 15, batch_size: int = 32, lr: float = 0.05, momentum: float = 0.9,
          seed: int = 0, quiet: bool = False, data=None, file=None) -> History:
    """Train the CNN and return its History.

    seed fixes the train/test split, the initial weights and the shuffling.
    data: optionally (x_train, y_train, x_test, y_test) instead of load_data(seed).
    Unless quiet, prints one line per epoch to file (default sys.stdout); on a
    terminal that line is a progress bar, redrawn as the epoch's batches run.
    """
    out = sys.stdout if file is None else file
    live = not quiet and out.isatty()      # redraw in place only on a terminal
    carriage_return = "\r" if live else ""
    x_train, y_train, x_test, y_test = load_data(seed) if data is None else data
    rng = np.random.default_rng(seed)
    model = CNN(rng)
    optimizer = SGD(model.params, lr=lr, momentum=momentum)
    n_batches = -(-len(x_train) // batch_size)             # ceil
    width = len(str(epochs))
    history = History()

    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(len(x_train))              # reshuffle every epoch
        loss_sum, correct = 0.0, 0
        for b in range(n_batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            xb, yb = x_train[idx], y_train[idx]
            logits = model.forward(xb)
            loss, grad_logits = softmax_cross_entropy(logits, yb)
            model.backward(grad_logits)
            optimizer.step(model.grads)
            loss_sum += loss * len(idx)
            correct += int((logits.argmax(axis=1) == yb).sum())
            if live:
                seen = min((b + 1) * batch_size, len(x_train))
                print(f"\repoch {epoch:>{width}}/{epochs} {progress_bar(b + 1, n_batches)}"
                      f"  loss {loss_sum / seen:.4f}", end="", file=out, flush=True)

        history.loss.append(loss_sum / len(x_train))
        history.train_accuracy.append(correct / len(x_train))
        history.test_accuracy.append(accuracy(model, x_test, y_test))
        if not quiet:   # the epoch's line, complete (over the live bar, if any)
            print(f"{carriage_return}epoch {epoch:>{width}}/{epochs} "
                  f"{progress_bar(n_batches, n_batches)}"
                  f"  loss {history.loss[-1]:.4f}"
                  f"  train acc {100 * history.train_accuracy[-1]:5.1f}%"
                  f"  test acc {100 * history.test_accuracy[-1]:5.1f}%"
                  f"  ({time.perf_counter() - t0:.2f} s)", file=out, flush=True)
    return history


def main(argv=None) -> History:
    parser = argparse.ArgumentParser(
        description="Train a small CNN on scikit-learn's 8x8 digits with fastim2col convolutions.")
    parser.add_argument("--epochs", type=int, default=15, help="passes over the training set (default 15)")
    parser.add_argument("--batch-size", type=int, default=32, help="mini-batch size (default 32)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--seed", type=int, default=0, help="seed for split, init and shuffling (default 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenMP threads for fastim2col's kernels (default 1: "
                             "these convolutions are too small to gain from more)")
    parser.add_argument("--quiet", action="store_true", help="print only the final result")
    args = parser.parse_args(argv)

    # One thread by default: a batch of 32 tiny 8x8 images is too little work
    # per convolution call to gain from splitting it across cores, and on a
    # busy machine a second OpenMP thread, spinning at each call's barrier
    # while it waits for a core, makes every call many times slower.
    fastim2col.set_num_threads(args.threads)
    try:
        start = time.perf_counter()
        history = train(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        momentum=args.momentum, seed=args.seed, quiet=args.quiet)
        elapsed = time.perf_counter() - start
        threads = fastim2col.get_num_threads()
    finally:
        fastim2col.set_num_threads(None)       # back to the library's default
    print(f"final test accuracy: {100 * history.test_accuracy[-1]:.2f}% "
          f"({args.epochs} epochs in {elapsed:.1f} s, fastim2col {fastim2col.__version__}, "
          f"{threads} thread{'s' if threads > 1 else ''})")
    return history


if __name__ == "__main__":
    main()
