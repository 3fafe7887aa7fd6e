"""The whole model through TorchScript's compiler, with the export interface (Detectron2's scripting route).

Unlike tracing, scripting keeps Detectron2's own inference code, data-dependent branches included; the
``Instances`` it uses become TorchScript classes (``scripting_with_instances``). No ``from __future__ import
annotations`` here: TorchScript reads the annotations as objects.
"""

from typing import Tuple

import torch
from detectron2.export import scripting_with_instances
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes
from torch import Tensor, nn

__all__ = ["script_model"]

# Every Instances field Mask R-CNN and the plugin's heads read or write at inference.
INSTANCE_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": Tensor,
    "pred_boxes": Boxes,
    "scores": Tensor,
    "pred_classes": Tensor,
    "pred_masks": Tensor,
    "pred_maskiou": Tensor,
}


class _ScriptableMaskRCNN(nn.Module):
    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        instances = self.model.inference([{"image": image}], do_postprocess=False)[0]
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes, instances.pred_masks


def script_model(model: GeneralizedRCNN) -> torch.jit.ScriptModule:
    """``forward(image) -> (boxes, scores, classes, masks)`` as a scripted module."""
    if type(model) is not GeneralizedRCNN:
        raise ValueError(
            f"--export-method scripting supports Detectron2's GeneralizedRCNN, got {type(model).__name__}; "
            "use --export-method tracing (or another format)"
        )
    return scripting_with_instances(_ScriptableMaskRCNN(model).eval(), INSTANCE_FIELDS)
