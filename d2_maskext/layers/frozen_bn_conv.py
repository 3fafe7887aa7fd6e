"""Detectron2 convolutions followed by ``FrozenBatchNorm2d``, computed as one convolution.

A frozen batch norm is a per-channel affine map, so it folds into the convolution's weights and bias. In
ResNet backbones it follows every convolution; unfolded it costs a full pass over each activation and,
under CPU autocast, a bfloat16 -> float32 -> bfloat16 round trip (``batch_norm`` runs in float32).
"""

from __future__ import annotations

from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["FrozenBNConv2d", "fold_frozen_batchnorm"]


class FrozenBNConv2d(Conv2d):
    """``Conv2d`` whose ``FrozenBatchNorm2d`` is applied through the weights (same parameters and state dict).

    The folded weights are recomputed from the current parameters on every call, so training updates the
    convolution as before and checkpoints are unchanged.
    """

    def forward(self, x: Tensor) -> Tensor:
        norm = self.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        weight = self.weight * scale.reshape(-1, 1, 1, 1)
        bias = shift if self.bias is None else self.bias * scale + shift
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_frozen_batchnorm(model: nn.Module) -> int:
    """Turn every Detectron2 ``Conv2d`` with a ``FrozenBatchNorm2d`` in ``model`` into a ``FrozenBNConv2d``
    in place; returns how many were folded."""
    count = 0
    for module in model.modules():
        if type(module) is Conv2d and isinstance(module.norm, FrozenBatchNorm2d):
            module.__class__ = FrozenBNConv2d
            count += 1
    return count
