"""Residual networks for CIFAR-sized images.

* :class:`CifarResNet` — the original post-activation ResNet-{20,32,56,...} of He et al.
  (CVPR 2016, Sec. 4.2) with the parameter-free "option A" shortcut.
* :class:`PreActResNet` — the pre-activation network of He et al. (ECCV 2016).  With
  four stages of two blocks and a 64-channel stem it is PreAct-ResNet-18; with three
  stages of ``(depth - 4) / 6`` blocks of widths ``16k, 32k, 64k`` and optional dropout
  it is the Wide ResNet WRN-depth-k of Zagoruyko & Komodakis (BMVC 2016).

All convolutions are bias-free and use He-normal fan-out init (torchvision's and the
reference implementations' choice); batch-norm scales start at 1 and offsets at 0;
the classifier is LeCun-normal with a zero bias.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrob.models import _layers as L


class _BasicBlockA(nnx.Module):
    """Post-activation basic block, ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``.

    The shortcut is parameter-free ("option A"): when the block downsamples it takes
    every ``stride``-th pixel and zero-pads the new channels (half on each side).
    """

    def __init__(self, cin: int, cout: int, stride: int, *, dtype, rngs: L.Rngs,
                 activation=jax.nn.relu):
        self.activation = activation
        self.conv1 = L.conv(cin, cout, 3, stride=stride, dtype=dtype, rngs=rngs)
        self.bn1 = L.batch_norm(cout, dtype=dtype, rngs=rngs)
        self.conv2 = L.conv(cout, cout, 3, dtype=dtype, rngs=rngs)
        self.bn2 = L.batch_norm(cout, dtype=dtype, rngs=rngs)
        self.stride = stride
        self.extra_channels = cout - cin

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        avg = not train
        y = self.activation(self.bn1(self.conv1(x), use_running_average=avg))
        y = self.bn2(self.conv2(y), use_running_average=avg)
        shortcut = x[:, ::self.stride, ::self.stride, :] if self.stride > 1 else x
        if self.extra_channels:
            lo = self.extra_channels // 2
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (lo, self.extra_channels - lo)))
        return self.activation(y + shortcut)


class CifarResNet(L.Classifier):
    """ResNet-``6n+2`` for CIFAR: 3x3 conv(16) -> 3 stages of ``n`` basic blocks -> GAP -> linear.

    Stages have 16, 32 and 64 channels; stages 2 and 3 halve the resolution in their
    first block.  Shortcuts are parameter-free (option A), so ResNet-20/32/56 have
    269,722 / 464,154 / 853,018 parameters for 10 classes (0.27 M / 0.46 M / 0.85 M as
    in the paper's Table 6).

    Parameters: ``conv1``, ``bn1``, ``layer{1,2,3}/{i}/{conv1,bn1,conv2,bn2}``, ``fc``.

    References:
      Deep Residual Learning for Image Recognition, He, Zhang, Ren & Sun, CVPR 2016,
      arXiv:1512.03385.
    """

    def __init__(self, *, input_shape, num_classes, mean, std, dtype=None, depth: int = 20,
                 activation=None, rngs: L.Rngs):
        super().__init__(input_shape=input_shape, num_classes=num_classes, mean=mean, std=std, dtype=dtype,
                         activation=activation)
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = L.conv(self.input_shape[-1], 16, 3, dtype=dtype, rngs=rngs)
        self.bn1 = L.batch_norm(16, dtype=dtype, rngs=rngs)
        cin = 16
        for s, (cout, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = []
            for i in range(n):
                blocks.append(_BasicBlockA(cin, cout, stride if i == 0 else 1, dtype=dtype, rngs=rngs,
                                           activation=self.activation))
                cin = cout
            setattr(self, f"layer{s}", nnx.List(blocks))
        self.fc = L.linear(64, num_classes, dtype=dtype, rngs=rngs)

    def forward(self, x, *, train, key):
        x = self.activation(self.bn1(self.conv1(x), use_running_average=not train))
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:
                x = block(x, train=train)
        return self.fc(L.global_avg_pool(x))


class _PreActBlock(nnx.Module):
    """Pre-activation basic block: ``conv(drop(relu(bn(conv(relu(bn(x))))))) + shortcut``.

    When the block changes resolution or width the shortcut is a bias-free 1x1
    convolution applied to the pre-activated input ``relu(bn1(x))``; otherwise it is
    the identity on ``x``.
    """

    def __init__(self, cin: int, cout: int, stride: int, *, dropout: float, dtype, rngs: L.Rngs,
                 activation=jax.nn.relu):
        self.activation = activation
        self.bn1 = L.batch_norm(cin, dtype=dtype, rngs=rngs)
        self.conv1 = L.conv(cin, cout, 3, stride=stride, dtype=dtype, rngs=rngs)
        self.bn2 = L.batch_norm(cout, dtype=dtype, rngs=rngs)
        self.conv2 = L.conv(cout, cout, 3, dtype=dtype, rngs=rngs)
        self.shortcut = (L.conv(cin, cout, 1, stride=stride, dtype=dtype, rngs=rngs)
                         if stride != 1 or cin != cout else None)
        self.dropout = dropout

    def __call__(self, x: jax.Array, *, train: bool, key: jax.Array | None) -> jax.Array:
        avg = not train
        y = self.activation(self.bn1(x, use_running_average=avg))
        shortcut = self.shortcut(y) if self.shortcut is not None else x
        y = self.conv1(y)
        y = self.activation(self.bn2(y, use_running_average=avg))
        y = L.dropout(y, self.dropout, train=train, key=key, where="this pre-activation ResNet")
        return self.conv2(y) + shortcut


class PreActResNet(L.Classifier):
    """Pre-activation ResNet: 3x3 stem conv -> stages of pre-activation blocks -> BN-ReLU -> GAP -> linear.

    Args (besides the common ones):
      stem_width: channels of the 3x3 stem convolution.
      widths: channels of each stage.
      blocks: number of blocks in each stage.
      strides: stride of the first block of each stage.
      dropout: dropout rate between the two convolutions of every block (train mode
        only; the mask is drawn from ``jax.random.fold_in(key, block_index)``).
      activation: replaces every ReLU (default ReLU).

    Parameters: ``conv1``, ``layer{s}/{i}/{bn1,conv1,bn2,conv2[,shortcut]}``, ``bn``, ``fc``.

    References:
      Identity Mappings in Deep Residual Networks, He, Zhang, Ren & Sun, ECCV 2016,
      arXiv:1603.05027.
      Wide Residual Networks, Zagoruyko & Komodakis, BMVC 2016, arXiv:1605.07146.
    """

    def __init__(self, *, input_shape, num_classes, mean, std, dtype=None, stem_width: int,
                 widths: Sequence[int], blocks: Sequence[int], strides: Sequence[int],
                 dropout: float = 0.0, activation=None, rngs: L.Rngs):
        super().__init__(input_shape=input_shape, num_classes=num_classes, mean=mean, std=std, dtype=dtype,
                         activation=activation)
        self.conv1 = L.conv(self.input_shape[-1], stem_width, 3, dtype=dtype, rngs=rngs)
        self.num_stages = len(widths)
        cin = stem_width
        for s, (cout, n, stride) in enumerate(zip(widths, blocks, strides), start=1):
            stage = []
            for i in range(n):
                stage.append(_PreActBlock(cin, cout, stride if i == 0 else 1, dropout=dropout,
                                          dtype=dtype, rngs=rngs, activation=self.activation))
                cin = cout
            setattr(self, f"layer{s}", nnx.List(stage))
        self.bn = L.batch_norm(cin, dtype=dtype, rngs=rngs)
        self.fc = L.linear(cin, num_classes, dtype=dtype, rngs=rngs)

    def forward(self, x, *, train, key):
        x = self.conv1(x)
        index = 0
        for s in range(1, self.num_stages + 1):
            for block in getattr(self, f"layer{s}"):
                needs_key = train and key is not None and block.dropout > 0
                block_key = jax.random.fold_in(key, index) if needs_key else None
                x = self.block_output(block(x, train=train, key=block_key), index, train=train, key=key)
                index += 1
        x = self.activation(self.bn(x, use_running_average=not train))
        return self.fc(L.global_avg_pool(x))

    def block_output(self, x: jax.Array, index: int, *, train: bool, key: jax.Array | None) -> jax.Array:
        """Hook on the output of residual block ``index`` (0-based, counted over all stages).

        The identity here; subclasses override it to act on the residual stream
        between blocks (e.g. :class:`jaxrob.ensembles.NoisyPreActResNet` injects
        Gaussian noise). ``key`` is the key passed to ``__call__`` (possibly ``None``).
        """
        del index, train, key
        return x
