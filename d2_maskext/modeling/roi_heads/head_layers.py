"""Layer builders shared by the plugin's box, mask and MaskIoU heads."""

from __future__ import annotations

import copy

import fvcore.nn.weight_init as weight_init
from detectron2.layers import Conv2d, get_norm
from torch import nn

_SCRIPTABLE_LISTS = "_scriptable_lists"  # where keep_scriptable_lists leaves its ModuleLists


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


def keep_scriptable_lists(module: nn.Module, *list_names: str) -> None:
    """At the end of ``__init__``: an ``nn.ModuleList`` per plain Python list of layers, for ``with_module_lists``.

    They are built now, not while scripting, and kept outside ``_modules`` (eager names and checkpoint keys
    stay stock's). TorchScript's preparation pass remembers modules by ``id()`` while Detectron2's backbone
    patches free the modules they deep-copy; a module created during that pass can reuse a freed id and be
    swapped for a stale module, an order-dependent scripting failure.
    """
    module.__dict__[_SCRIPTABLE_LISTS] = {name: nn.ModuleList(getattr(module, name)) for name in list_names}


def with_module_lists(module: nn.Module) -> nn.Module:
    """For ``__prepare_scriptable__``: a shallow copy whose lists from ``keep_scriptable_lists`` are submodules.

    TorchScript cannot iterate a Python list of modules. The copy shares every layer and parameter with
    ``module`` (which is left as it is) and reaches each listed layer under both names.
    """
    scriptable = copy.copy(module)
    lists = scriptable.__dict__.pop(_SCRIPTABLE_LISTS)
    for name in lists:
        del scriptable.__dict__[name]
    scriptable.__dict__["_modules"] = {**module._modules, **lists}
    return scriptable

