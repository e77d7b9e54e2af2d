"""Flax NNX models exposed as pure functions (see :mod:`jaxrob.models._base`).

``create(name, key=...)`` builds any model of the zoo as a :class:`Model`:
``apply_fn(variables, x)`` (eval mode) and ``train_apply(variables, x, *, key)``
over plain-dict ``variables = {"params": ..., "batch_stats": ...}``.  Inputs are
NHWC float images in [0, 1]; normalisation happens inside the model.

=================  ===========  ===========  ==========================================
name               input        params (10   architecture
                                classes)
=================  ===========  ===========  ==========================================
mlp                28x28x1      269,322      784-256-256-10 ReLU MLP
cnn_small          28x28x1      824,458      conv32-pool-conv64-pool-fc256-fc
resnet20           32x32x3      269,722      He et al. 2016, option-A shortcuts
resnet32           32x32x3      464,154      "
resnet56           32x32x3      853,018      "
preact_resnet18    32x32x3      11,172,170   He et al. ECCV 2016, final BN-ReLU
wrn28_10           32x32x3      36,479,194   Zagoruyko & Komodakis 2016
wrn34_10           32x32x3      46,160,474   "
vgg11_bn           32x32x3      9,231,114    VGG-A + BN, Linear(512, 10) head
vgg16_bn           32x32x3      14,728,266   VGG-D + BN, Linear(512, 10) head
mobilenet_v2       32x32x3      2,236,682    Sandler et al. 2018, CIFAR strides
=================  ===========  ===========  ==========================================

``wide_resnet`` takes ``depth`` and ``width`` (``wrn28_10``/``wrn34_10`` are aliases).
"""

from jaxrob.models._base import Model, count_params, from_nnx
from jaxrob.models._layers import Classifier
from jaxrob.models._registry import MODELS, available, create, create_abstract, create_module

__all__ = ["Classifier", "MODELS", "Model", "available", "count_params", "create", "create_abstract",
           "create_module", "from_nnx"]
