"""MobileNetV2 adapted to 32x32 images."""

from __future__ import annotations

import jax
from flax import nnx

from jaxrob.models import _layers as L

#: (expansion t, output channels c, repeats n, stride s) per stage, Table 2 of the paper,
#: with the second stage's stride changed from 2 to 1 for 32x32 inputs (see MobileNetV2).
CIFAR_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds a scaled channel count to a multiple of ``divisor``, never dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class _InvertedResidual(nnx.Module):
    """Expand (1x1, ReLU6) -> depthwise 3x3 (ReLU6) -> linear project (1x1), residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, *, dtype, rngs: L.Rngs,
                 activation=jax.nn.relu6):
        self.activation = activation
        hidden = cin * expansion
        if expansion != 1:
            self.expand = L.conv(cin, hidden, 1, dtype=dtype, rngs=rngs)
            self.bn0 = L.batch_norm(hidden, dtype=dtype, rngs=rngs)
        else:
            self.expand = self.bn0 = None
        self.depthwise = L.conv(hidden, hidden, 3, stride=stride, groups=hidden, dtype=dtype, rngs=rngs)
        self.bn1 = L.batch_norm(hidden, dtype=dtype, rngs=rngs)
        self.project = L.conv(hidden, cout, 1, dtype=dtype, rngs=rngs)
        self.bn2 = L.batch_norm(cout, dtype=dtype, rngs=rngs)
        self.residual = stride == 1 and cin == cout

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        avg = not train
        y = x
        if self.expand is not None:
            y = self.activation(self.bn0(self.expand(y), use_running_average=avg))
        y = self.activation(self.bn1(self.depthwise(y), use_running_average=avg))
        y = self.bn2(self.project(y), use_running_average=avg)
        return x + y if self.residual else y


class MobileNetV2(L.Classifier):
    """MobileNetV2 for 32x32 images.

    The architecture of Table 2 of the paper (inverted residual bottlenecks with
    linear projections, ReLU6, identity shortcuts only where stride is 1 and the
    width is unchanged — no projection shortcuts), with the usual CIFAR adaptation:
    the stem 3x3 convolution has stride 1 instead of 2 **and** the second stage
    (24 channels) has stride 1 instead of 2, so a 32x32 input is downsampled
    32 -> 16 -> 8 -> 4 only.  Channel counts are ``make_divisible(c * width_mult, 8)``;
    the last 1x1 convolution keeps 1280 channels for ``width_mult <= 1`` (scaled up
    otherwise), as in the paper.  Head: global average pool -> dropout (rate
    ``dropout``, default 0) -> linear.  ``activation`` (default ReLU6) replaces every ReLU6.  At width 1.0 and 10 classes this has 2,236,682
    parameters.  Convolutions use He-normal fan-out init.

    Parameters: ``stem``, ``stem_bn``, ``blocks/{i}/{[expand,bn0,]depthwise,bn1,project,bn2}``,
    ``last``, ``last_bn``, ``fc``.

    References:
      MobileNetV2: Inverted Residuals and Linear Bottlenecks, Sandler, Howard, Zhu,
      Zhmoginov & Chen, CVPR 2018, arXiv:1801.04381.
    """

    default_activation = staticmethod(jax.nn.relu6)

    def __init__(self, *, input_shape, num_classes, mean, std, dtype=None, width_mult: float = 1.0,
                 dropout: float = 0.0, activation=None, rngs: L.Rngs):
        super().__init__(input_shape=input_shape, num_classes=num_classes, mean=mean, std=std, dtype=dtype,
                         activation=activation)
        cin = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        self.stem = L.conv(self.input_shape[-1], cin, 3, dtype=dtype, rngs=rngs)
        self.stem_bn = L.batch_norm(cin, dtype=dtype, rngs=rngs)
        blocks = []
        for t, c, n, s in CIFAR_STAGES:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                blocks.append(_InvertedResidual(cin, cout, s if i == 0 else 1, t, dtype=dtype, rngs=rngs,
                                                 activation=self.activation))
                cin = cout
        self.blocks = nnx.List(blocks)
        self.last = L.conv(cin, last, 1, dtype=dtype, rngs=rngs)
        self.last_bn = L.batch_norm(last, dtype=dtype, rngs=rngs)
        self.fc = L.linear(last, num_classes, dtype=dtype, rngs=rngs)
        self.dropout = dropout

    def forward(self, x, *, train, key):
        avg = not train
        x = self.activation(self.stem_bn(self.stem(x), use_running_average=avg))
        for block in self.blocks:
            x = block(x, train=train)
        x = self.activation(self.last_bn(self.last(x), use_running_average=avg))
        x = L.dropout(L.global_avg_pool(x), self.dropout, train=train, key=key, where="mobilenet_v2")
        return self.fc(x)
