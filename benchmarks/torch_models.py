"""PyTorch twins of jaxrob's ``cnn_small`` and ``resnet20``, and a weight converter.

The benchmarks run one set of weights through both frameworks, so the torch
modules here reproduce the jaxrob models operation for operation:

* the same input normalisation inside the model (inputs are images in [0, 1]);
* the same padding (3x3 convolutions pad 1 pixel on every side; jaxrob's
  ``cnn_small`` uses ``"SAME"``, which for stride 1 and a 3x3 kernel is that
  symmetric padding, and its ResNet convolutions pad ``kernel // 2`` explicitly);
* the same option-A shortcut in ResNet-20 (``x[:, :, ::2, ::2]`` then zero
  channels, ``(cout - cin) // 2`` before and the rest after);
* batch norm with ``eps = 1e-5``; in eval mode both use the running statistics.

Parameters carry jaxrob's names (``conv1``, ``layer2.0.bn1``, ``fc`` ...), so
:func:`state_dict_from_jaxrob` converts a jaxrob ``variables`` dict by walking it:

========================  =================================  ======================
jaxrob leaf               torch entry                        transform
========================  =================================  ======================
conv ``kernel`` (HWIO)    ``weight`` (OIHW)                  ``transpose(3, 2, 0, 1)``
dense ``kernel`` (in,out)  ``weight`` (out, in)              ``.T`` (+ flatten order)
``bias``                  ``bias``                           copy
BN ``scale`` / ``bias``   ``weight`` / ``bias``              copy
BN ``mean`` / ``var``     ``running_mean`` / ``running_var``  copy
========================  =================================  ======================

A dense layer fed by flattened feature maps needs one more step: jaxrob flattens
NHWC (index ``(h * W + w) * C + c``), torch NCHW (``(c * H + h) * W + w``), so its
input rows are permuted (``flattened_from`` below).

Nothing here is imported by the jaxrob package; torch is an optional benchmark
dependency (see ``benchmarks/README.md``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
BN_EPS = 1e-5


class _Normalise(nn.Module):
    """``(x - mean) / std`` per channel on NCHW input, constants as buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TorchSmallCNN(nn.Module):
    """Twin of jaxrob ``cnn_small``: conv32-relu-pool-conv64-relu-pool-fc256-relu-fc (NCHW input)."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (28, 28, 1),
                 mean: Sequence[float] = MNIST_MEAN, std: Sequence[float] = MNIST_STD):
        super().__init__()
        h, w, c = input_shape
        self.normalise = _Normalise(mean, std)
        self.conv1 = nn.Conv2d(c, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear((h // 4) * (w // 4) * 64, 256)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalise(x)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class _BasicBlockA(nn.Module):
    """Post-activation basic block with jaxrob's option-A shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.stride = stride
        self.extra = cout - cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.extra:
            lo = self.extra // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, lo, self.extra - lo))
        return F.relu(y + shortcut)


class TorchCifarResNet(nn.Module):
    """Twin of jaxrob ``resnet20`` (``depth=20``; any ``6n + 2``), NCHW input."""

    def __init__(self, num_classes: int = 10, depth: int = 20, in_channels: int = 3,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.normalise = _Normalise(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16, eps=BN_EPS)
        cin = 16
        for s, (cout, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = []
            for i in range(n):
                blocks.append(_BasicBlockA(cin, cout, stride if i == 0 else 1))
                cin = cout
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.normalise(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


# ----------------------------------------------------------------------------- conversion


def _flatten_paths(tree: Mapping[Any, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
    out = {}
    for k, v in tree.items():
        path = prefix + (str(k),)
        if isinstance(v, Mapping):
            out.update(_flatten_paths(v, path))
        else:
            out[path] = np.asarray(v, dtype=np.float32)
    return out


def dense_from_nhwc_flatten(kernel: np.ndarray, hwc: tuple[int, int, int]) -> np.ndarray:
    """A jaxrob dense kernel fed by an NHWC flatten -> torch ``Linear.weight`` fed by an NCHW flatten.

    Args:
      kernel: ``(H*W*C, out)``, rows indexed ``(h * W + w) * C + c``.
      hwc: the ``(H, W, C)`` of the flattened feature map.

    Returns:
      ``(out, C*H*W)``, columns indexed ``(c * H + h) * W + w``.
    """
    h, w, c = hwc
    if kernel.shape[0] != h * w * c:
        raise ValueError(f"kernel has {kernel.shape[0]} input rows, expected H*W*C = {h * w * c} for {hwc}")
    return np.ascontiguousarray(kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1))


def state_dict_from_jaxrob(variables: Mapping[str, Any], *,
                           flattened_from: Mapping[str, tuple[int, int, int]] | None = None
                           ) -> dict[str, torch.Tensor]:
    """Converts jaxrob ``variables`` to a torch ``state_dict`` for the twins above.

    Args:
      variables: ``{"params": ..., "batch_stats": ...}`` nested dicts of arrays.
      flattened_from: for dense layers fed by flattened feature maps, their
        dotted name and the ``(H, W, C)`` of that map, e.g. ``{"fc1": (7, 7, 64)}``.

    Returns:
      ``{dotted_name: tensor}`` with batch-norm ``num_batches_tracked`` set to 0.
    """
    flattened_from = dict(flattened_from or {})
    sd: dict[str, torch.Tensor] = {}
    for path, a in _flatten_paths(variables.get("params", {})).items():
        module, leaf = ".".join(path[:-1]), path[-1]
        if leaf == "kernel" and a.ndim == 4:          # conv HWIO -> OIHW
            sd[f"{module}.weight"] = torch.from_numpy(np.ascontiguousarray(a.transpose(3, 2, 0, 1)))
        elif leaf == "kernel" and a.ndim == 2:        # dense (in, out) -> (out, in)
            w = dense_from_nhwc_flatten(a, flattened_from.pop(module)) if module in flattened_from \
                else np.ascontiguousarray(a.T)
            sd[f"{module}.weight"] = torch.from_numpy(w)
        elif leaf == "scale":                        # batch-norm gamma
            sd[f"{module}.weight"] = torch.from_numpy(a.copy())
        elif leaf == "bias":
            sd[f"{module}.bias"] = torch.from_numpy(a.copy())
        else:
            raise ValueError(f"don't know how to convert parameter {'/'.join(path)} of shape {a.shape}")
    if flattened_from:
        raise ValueError(f"flattened_from names layers that are not dense kernels: {sorted(flattened_from)}")
    for path, a in _flatten_paths(variables.get("batch_stats", {})).items():
        module, leaf = ".".join(path[:-1]), path[-1]
        names = {"mean": "running_mean", "var": "running_var"}
        if leaf not in names:
            raise ValueError(f"don't know how to convert batch statistic {'/'.join(path)}")
        sd[f"{module}.{names[leaf]}"] = torch.from_numpy(a.copy())
        sd[f"{module}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return sd


def load_jaxrob(module: nn.Module, variables: Mapping[str, Any], **kwargs: Any) -> nn.Module:
    """Loads converted jaxrob ``variables`` into ``module`` (strict: every entry must match)."""
    sd = state_dict_from_jaxrob(variables, **kwargs)
    own = module.state_dict()
    for k, v in sd.items():
        if k not in own:
            raise ValueError(f"converted entry {k!r} has no counterpart in {type(module).__name__}")
        if tuple(own[k].shape) != tuple(v.shape):
            raise ValueError(f"{k}: torch expects shape {tuple(own[k].shape)}, converted {tuple(v.shape)}")
    module.load_state_dict(sd, strict=True)
    return module


def torch_twin(name: str, variables: Mapping[str, Any], *, num_classes: int = 10,
               input_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """The torch twin of jaxrob model ``name`` carrying ``variables``, in eval mode.

    Args:
      name: ``"cnn_small"`` or ``"resnet20"``.
      variables: the jaxrob model's variables.
      num_classes: logits.
      input_shape: ``(H, W, C)``; defaults 28x28x1 (cnn_small) and 32x32x3 (resnet20).
    """
    if name == "cnn_small":
        shape = tuple(input_shape or (28, 28, 1))
        model = TorchSmallCNN(num_classes, shape)
        load_jaxrob(model, variables, flattened_from={"fc1": (shape[0] // 4, shape[1] // 4, 64)})
    elif name == "resnet20":
        shape = tuple(input_shape or (32, 32, 3))
        model = TorchCifarResNet(num_classes, 20, in_channels=shape[2])
        load_jaxrob(model, variables)
    else:
        raise ValueError(f"no torch twin for model {name!r}; available: 'cnn_small', 'resnet20'")
    return model.eval()


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    """``(N, H, W, C) -> (N, C, H, W)``, contiguous."""
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))
