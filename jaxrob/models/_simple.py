"""Small models for MNIST-scale experiments: an MLP and a two-conv CNN."""

from __future__ import annotations

from typing import Sequence

from flax import nnx

from jaxrob.models import _layers as L


class MLP(L.Classifier):
    """Fully connected ReLU network on the flattened image.

    ``flatten (H*W*C, NHWC order) -> [Dense(h) -> ReLU] for h in hidden_sizes -> Dense(num_classes)``.
    ``activation`` (default ReLU) replaces every ReLU.

    Parameters: ``hidden{i}`` (``kernel`` of shape ``(in, out)``, ``bias``) and ``head``.
    Hidden layers use He-normal (fan-in) init, the head LeCun-normal; biases start at 0.
    """

    fixed_spatial_size = True

    def __init__(self, *, input_shape, num_classes, mean, std, dtype=None,
                 hidden_sizes: Sequence[int] = (256, 256), activation=None,
                 rngs: L.Rngs):
        super().__init__(input_shape=input_shape, num_classes=num_classes, mean=mean, std=std, dtype=dtype,
                         activation=activation)
        h, w, c = self.input_shape
        sizes = (h * w * c, *hidden_sizes)
        self.hidden = nnx.List([
            L.linear(a, b, kernel_init=L.relu_init, dtype=dtype, rngs=rngs)
            for a, b in zip(sizes[:-1], sizes[1:])])
        self.head = L.linear(sizes[-1], num_classes, dtype=dtype, rngs=rngs)

    def forward(self, x, *, train, key):
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = self.activation(layer(x))
        return self.head(x)


class SmallCNN(L.Classifier):
    """The small MNIST CNN used for quick robustness experiments.

    Exactly::

        Conv(32, 3x3, SAME) -> ReLU -> MaxPool 2x2
        -> Conv(64, 3x3, SAME) -> ReLU -> MaxPool 2x2
        -> flatten -> Dense(256) -> ReLU -> Dense(num_classes)

    No batch norm; ``activation`` (default ReLU) replaces every ReLU.  Parameter layout (for porting weights to/from other frameworks)::

        conv1/kernel (3, 3, C, 32)   HWIO      conv1/bias (32,)
        conv2/kernel (3, 3, 32, 64)  HWIO      conv2/bias (64,)
        fc1/kernel   (H//4 * W//4 * 64, 256)   fc1/bias (256,)    # (in, out)
        fc2/kernel   (256, num_classes)        fc2/bias (num_classes,)

    The flatten is over NHWC feature maps, so ``fc1``'s input index is
    ``(row * (W//4) + col) * 64 + channel``.  PyTorch's ``Conv2d.weight`` is OIHW
    (``kernel.transpose(3, 2, 0, 1)``), ``Linear.weight`` is ``(out, in)``, and its
    flatten is NCHW, so ``fc1`` rows must be permuted accordingly.  Pools use floor
    semantics (28 -> 14 -> 7).  For 28x28x1 inputs this has 824,458 parameters.
    Convolutions and ``fc1`` use He-normal (fan-in) init, ``fc2`` LeCun-normal.
    """

    fixed_spatial_size = True

    def __init__(self, *, input_shape, num_classes, mean, std, dtype=None, activation=None,
                 rngs: L.Rngs):
        super().__init__(input_shape=input_shape, num_classes=num_classes, mean=mean, std=std, dtype=dtype,
                         activation=activation)
        L.check_shape_at_least("cnn_small", self.input_shape, 4, "two 2x2 max pools")
        h, w, c = self.input_shape
        self.conv1 = nnx.Conv(c, 32, (3, 3), padding="SAME", kernel_init=L.relu_init,
                              bias_init=L.zeros_init, dtype=dtype, rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), padding="SAME", kernel_init=L.relu_init,
                              bias_init=L.zeros_init, dtype=dtype, rngs=rngs)
        self.fc1 = L.linear((h // 4) * (w // 4) * 64, 256, kernel_init=L.relu_init, dtype=dtype, rngs=rngs)
        self.fc2 = L.linear(256, num_classes, dtype=dtype, rngs=rngs)

    def forward(self, x, *, train, key):
        x = L.max_pool(self.activation(self.conv1(x)))
        x = L.max_pool(self.activation(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)
        return self.fc2(self.activation(self.fc1(x)))
