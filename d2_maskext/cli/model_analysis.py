"""FLOP counting that sees the plugin's RoIAlign.

fvcore counts the operators of a traced model by name and skips the ones it does not know, with a
warning. ``torch.ops.d2_maskext.roi_align`` (the fused pooler's op, all FPN levels in one call) would be
skipped, under-counting every model that uses it; :class:`FlopCountAnalysis` gives it a count.
"""

from __future__ import annotations

from typing import Any

from detectron2.utils.analysis import FlopCountAnalysis as DetectronFlopCountAnalysis
from fvcore.nn.jit_handles import get_shape

ROI_ALIGN_OP = "d2_maskext::roi_align"
BILINEAR_TAPS = 4  # each sampling point reads and weights four feature-map pixels
ADAPTIVE_SAMPLES_PER_SIDE = 2  # sampling_ratio 0: the grid depends on each box; 2 for boxes up to 2x the bin grid
SAMPLING_RATIO_INPUT = 6  # position of sampling_ratio in the op's schema


def _constant_int(value: Any) -> int | None:
    """The integer a traced graph holds as a constant input, or None when it is computed."""
    node = value.node()
    return int(node.output().toIValue()) if node.kind() == "prim::Constant" else None


def roi_align_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """FLOPs of one ``d2_maskext::roi_align`` call: per output element (roi, channel, bin), one multiply-add
    per bilinear tap of each sampling point of the bin."""
    rois, channels, height, width = get_shape(outputs[0])
    sampling_ratio = _constant_int(inputs[SAMPLING_RATIO_INPUT])
    per_side = sampling_ratio if sampling_ratio else ADAPTIVE_SAMPLES_PER_SIDE
    return rois * channels * height * width * per_side * per_side * BILINEAR_TAPS


class FlopCountAnalysis(DetectronFlopCountAnalysis):
    """Detectron2's ``FlopCountAnalysis`` (models taking and returning dicts and ``Instances``) that also
    counts ``d2_maskext::roi_align``."""

    def __init__(self, model, inputs) -> None:
        super().__init__(model, inputs)
        self.set_op_handle(**{ROI_ALIGN_OP: roi_align_flop_jit})
