"""Detectron2 convolutions with their frozen batch norm folded in and, at CPU inference, run fused on oneDNN.

A frozen batch norm is a per-channel affine map, so it folds into the convolution's weights and bias. In
ResNet backbones it follows every convolution; unfolded it costs a full pass over each activation and,
under CPU autocast, a bfloat16 -> float32 -> bfloat16 round trip (``batch_norm`` runs in float32).

At inference (no autograd, CPU) eager PyTorch still re-casts every weight to the autocast dtype and
re-orders it into oneDNN's blocked layout on every call, and runs each ReLU as a separate pass over the
activation. There the convolutions use oneDNN weights packed once (repacked when the parameters change)
with the ReLU applied inside the convolution: the profile's weight casts, reorders and most ``clamp_min_``
passes go away. (Fusing the residual add too was measured slower: oneDNN's binary post-op costs more than
the separate ``add_``.) Training and autograd take the unfused path.
"""

from __future__ import annotations

import weakref

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock
from torch import Tensor, nn
from torch.nn import functional as F

from ..utils.cpu_features import cpu_supports_fast_bfloat16

__all__ = ["FusedConv2d", "fuse_convolutions"]

# Packed weights live beside the modules, not in them: they are oneDNN tensors that cannot be copied or
# pickled, and must never reach a state dict.
_PACKED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Tensor, Tensor | None]] = weakref.WeakKeyDictionary()


def _is_relu(activation) -> bool:
    return activation in (F.relu, F.relu_, torch.relu, torch.relu_) or isinstance(activation, nn.ReLU)


def _fused_compute_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype a fused convolution runs in for input ``x``, or ``None`` where it must not run fused."""
    if (
        x.device.type != "cpu"
        or x.dim() != 4
        or torch.is_grad_enabled()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or not torch.backends.mkldnn.is_available()
    ):
        return None
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    if dtype == torch.bfloat16:  # oneDNN's bfloat16 weight reorder needs AVX512 or AVX-NE-CONVERT
        return dtype if cpu_supports_fast_bfloat16() else None
    return dtype if dtype == torch.float32 else None


class FusedConv2d(Conv2d):
    """``Conv2d`` (no norm, or ``FrozenBatchNorm2d`` applied through its weights) with a fused inference path.

    Parameters and state dict are the stock ones; folded weights are computed from the current parameters,
    so training updates the convolution as before and checkpoints are unchanged.
    """

    def folded_weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        norm = self.norm
        if norm is None:
            return self.weight, self.bias
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        bias = shift if self.bias is None else self.bias * scale + shift
        return self.weight * scale.reshape(-1, 1, 1, 1), bias

    def forward(self, x: Tensor) -> Tensor:
        dtype = _fused_compute_dtype(x)
        if dtype is not None:
            if _is_relu(self.activation):
                return self.fused(x, dtype, relu=True)
            x = self.fused(x, dtype)
        else:
            weight, bias = self.folded_weight_and_bias()
            x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def fused(self, x: Tensor, dtype: torch.dtype, relu: bool = False) -> Tensor:
        """``conv(x)``, or ``relu(conv(x))``, in one oneDNN call in ``dtype``, which the caller got from
        ``_fused_compute_dtype(x)`` (CPU inference only; ``activation`` is not applied)."""
        weight, bias = self._packed(x, dtype)
        return torch.ops.mkldnn._convolution_pointwise(
            x.to(dtype), weight, bias, list(self.padding), list(self.stride), list(self.dilation), self.groups,
            "relu" if relu else "none", [None], "",
        )

    def _packed(self, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        sources = [t for t in (self.weight, self.bias) if t is not None]
        if self.norm is not None:
            norm = self.norm
            sources += [norm.weight, norm.bias, norm.running_mean, norm.running_var]
        key = (dtype, *((t.data_ptr(), t._version) for t in sources))
        cached = _PACKED.get(self)
        if cached is None or cached[0] != key:
            weight, bias = self.folded_weight_and_bias()
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                weight.to(dtype).contiguous(), list(self.padding), list(self.stride), list(self.dilation),
                self.groups, list(x.shape),
            )
            cached = (key, packed, None if bias is None else bias.to(dtype))
            _PACKED[self] = cached
        return cached[1], cached[2]


def _fusable(*convs: nn.Module | None) -> bool:
    return all(conv is None or type(conv) is FusedConv2d for conv in convs)


class FusedBottleneckBlock(BottleneckBlock):
    """ResNet bottleneck whose inner ReLUs run inside its convolutions at inference."""

    def forward(self, x: Tensor) -> Tensor:
        dtype = _fused_compute_dtype(x)
        if dtype is None or not _fusable(self.conv1, self.conv2, self.conv3, self.shortcut):
            return super().forward(x)
        shortcut = x if self.shortcut is None else self.shortcut.fused(x, dtype)
        out = self.conv1.fused(x, dtype, relu=True)
        out = self.conv3.fused(self.conv2.fused(out, dtype, relu=True), dtype)
        out += shortcut
        return F.relu_(out)


class FusedBasicBlock(BasicBlock):
    """ResNet basic block whose inner ReLU runs inside its first convolution at inference."""

    def forward(self, x: Tensor) -> Tensor:
        dtype = _fused_compute_dtype(x)
        if dtype is None or not _fusable(self.conv1, self.conv2, self.shortcut):
            return super().forward(x)
        shortcut = x if self.shortcut is None else self.shortcut.fused(x, dtype)
        out = self.conv2.fused(self.conv1.fused(x, dtype, relu=True), dtype)
        out += shortcut
        return F.relu_(out)


class FusedBasicStem(BasicStem):
    """ResNet stem whose ReLU runs inside its convolution at inference."""

    def forward(self, x: Tensor) -> Tensor:
        dtype = _fused_compute_dtype(x)
        if dtype is None or not _fusable(self.conv1):
            return super().forward(x)
        return F.max_pool2d(self.conv1.fused(x, dtype, relu=True), kernel_size=3, stride=2, padding=1)


_FUSED_BLOCKS = {BottleneckBlock: FusedBottleneckBlock, BasicBlock: FusedBasicBlock, BasicStem: FusedBasicStem}


def fuse_convolutions(model: nn.Module) -> int:
    """Turn, in place, every Detectron2 ``Conv2d`` of ``model`` without a trainable norm (none, or frozen
    batch norm) into a ``FusedConv2d``, and Detectron2's ResNet stem and blocks into their fused forms.
    Parameters, buffers and state-dict keys are unchanged. Returns how many convolutions were converted."""
    count = 0
    for module in model.modules():
        if type(module) is Conv2d and (module.norm is None or isinstance(module.norm, FrozenBatchNorm2d)):
            if isinstance(module.padding, str):
                continue
            module.__class__ = FusedConv2d
            count += 1
    for module in model.modules():
        fused_block = _FUSED_BLOCKS.get(type(module))
        if fused_block is not None:
            module.__class__ = fused_block
    return count
