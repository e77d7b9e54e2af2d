"""VGG with batch norm, in the common CIFAR variant."""

from __future__ import annotations

import jax
from flax import nnx

from jaxrob.models import _layers as L

#: Channel widths per convolution, ``"M"`` = 2x2 max pool (configurations A and D of the paper).
VGG_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


class _ConvBN(nnx.Module):
    """3x3 conv (with bias, as in the reference VGG) -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int, *, dtype, rngs: L.Rngs, activation=jax.nn.relu):
        self.activation = activation
        self.conv = L.conv(cin, cout, 3, bias=True, dtype=dtype, rngs=rngs)
        self.bn = L.batch_norm(cout, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return self.activation(self.bn(self.conv(x), use_running_average=not train))


class VGG(L.Classifier):
    """VGG-11/16 with batch norm for 32x32 images.

    The convolutional part is configuration A (VGG-11) or D (VGG-16) of the paper,
    each 3x3 convolution followed by BN and ReLU, with five 2x2 max pools, so a
    32x32 input reaches 1x1x512.  The classifier is the common CIFAR variant: a
    single ``Linear(512, num_classes)`` on the flattened features (no 4096-wide
    fully connected layers); ``activation`` (default ReLU) replaces every ReLU.  For 10 classes VGG-11-BN has 9,231,114 and VGG-16-BN
    14,728,266 parameters.  Larger inputs (multiples of 32) give a proportionally
    wider flatten.  Convolutions use He-normal fan-out init with zero bias.

    Parameters: ``features/{i}/{conv,bn}`` (one entry per convolution), ``fc``.

    References:
      Very Deep Convolutional Networks for Large-Scale Image Recognition, Simonyan &
      Zisserman, ICLR 2015, arXiv:1409.1556.
    """

    fixed_spatial_size = True

    def __init__(self, *, input_shape, num_classes, mean, std, dtype=None, depth: int = 16,
                 activation=None, rngs: L.Rngs):
        super().__init__(input_shape=input_shape, num_classes=num_classes, mean=mean, std=std, dtype=dtype,
                         activation=activation)
        L.check_shape_at_least(f"vgg{depth}_bn", self.input_shape, 32, "five 2x2 max pools")
        self.config = VGG_CONFIGS[depth]
        h, w, cin = self.input_shape
        layers = []
        for v in self.config:
            if v != "M":
                layers.append(_ConvBN(cin, v, dtype=dtype, rngs=rngs, activation=self.activation))
                cin = v
        self.features = nnx.List(layers)
        self.fc = L.linear((h // 32) * (w // 32) * cin, num_classes, dtype=dtype, rngs=rngs)

    def forward(self, x, *, train, key):
        layers = iter(self.features)
        for v in self.config:
            x = L.max_pool(x) if v == "M" else next(layers)(x, train=train)
        return self.fc(x.reshape(x.shape[0], -1))
