"""Layer builders shared by the plugin's box, mask and MaskIoU heads."""

from __future__ import annotations

import copy

import fvcore.nn.weight_init as weight_init
from detectron2.layers import Conv2d, get_norm
from torch import nn


def conv3x3_norm_relu(in_channels: int, out_channels: int, norm: str, stride: int = 1) -> Conv2d:
    """3x3 conv + norm + ReLU with Detectron2's MSRA init, as in its mask head."""
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size=3,
        stride=stride,
        padding=1,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=nn.ReLU(),
    )
    weight_init.c2_msra_fill(conv)
    return conv


def with_module_lists(module: nn.Module, *list_names: str) -> nn.Module:
    """A deep copy of ``module`` whose plain Python lists of layers ``list_names`` are ``nn.ModuleList``s.

    For ``__prepare_scriptable__``: TorchScript cannot iterate a Python list of modules, and the layers must
    keep their own (stock checkpoint) names in eager mode. The scripted copy reaches each layer under both.
    """
    scriptable = copy.deepcopy(module)
    for name in list_names:
        setattr(scriptable, name, nn.ModuleList(getattr(scriptable, name)))
    return scriptable
