"""``MaskExtRCNN``: Detectron2's ``GeneralizedRCNN`` running its network in channels-last and mixed precision.

The settings live in the model (``MODEL.MASKEXT.CHANNELS_LAST``, ``MODEL.MASKEXT.PRECISION``), so every
caller of ``model(inputs)`` — the trainer, ``DefaultPredictor``, ``--eval-only``, the evaluators, the
prediction and report tools, user code — gets them without a change.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import BitMasks, ImageList, Instances, ROIMasks
from torch import Tensor, nn

from ..layers import fuse_convolutions
from ..layers.paste_masks import paste_masks
from ..utils.display import to_display_rgb
from ..utils.image_io import RAW_FORMAT
from .precision import (
    ComputeSettings,
    model_precision,
    prepare_for_autocast,
    resolve_compute_settings,
    runs_channels_last,
)
from .tiling import TilingSettings, check_tile_size, tiled_inference, tiling_from_config

__all__ = ["MaskExtRCNN"]

# Modules whose outputs feed float32 math (box decoding, scores, NMS, losses, mask probabilities): their
# outputs are cast back to float32 so that only the network itself runs in the reduced precision.
FLOAT32_OUTPUT_MODULES = (
    "proposal_generator.rpn_head",
    "roi_heads.box_predictor",
    "roi_heads.mask_head.predictor",
    "roi_heads.mask_head.mask_logits",
    "roi_heads.mask_head.boundary_predictor",
    "roi_heads.maskiou_head",
)


def _to_float32(value):
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float32(v) for v in value)
    return value


def _outputs_to_float32(module: nn.Module, inputs, output):
    return _to_float32(output)


def _instances_to_float32(instances: Instances) -> Instances:
    for name, value in instances.get_fields().items():
        if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != torch.float32:
            instances.set(name, value.float())
    return instances


class _SeparablePasteROIMasks(ROIMasks):
    """``ROIMasks`` pasted by :func:`paste_masks` when ``detector_postprocess`` turns them into image masks."""

    def __getitem__(self, item) -> _SeparablePasteROIMasks:
        return _SeparablePasteROIMasks(super().__getitem__(item).tensor)

    def to_bitmasks(self, boxes: Tensor, height, width, threshold: float = 0.5) -> BitMasks:
        # Tracing needs Detectron2's shape handling; a negative threshold asks for its soft (uint8) masks.
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or threshold < 0:
            return super().to_bitmasks(boxes, height, width, threshold)
        return BitMasks(paste_masks(self.tensor, boxes.tensor, (int(height), int(width)), threshold))


@META_ARCH_REGISTRY.register()
class MaskExtRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` whose backbone and heads run in the configured memory format and precision.

    Weights stay float32 (channels-last strides only), so checkpoints load into stock ``GeneralizedRCNN``
    and back. Under reduced precision, outputs that enter box decoding, NMS, losses and mask pasting are
    float32, and returned instances hold float32 tensors. With either setting on, frozen batch norms fold into
    their convolutions, which at CPU inference run on packed weights with ReLU fused in
    (:func:`fuse_convolutions`). Masks are pasted into the image by separable resizes (:func:`paste_masks`,
    equal to Detectron2's ``paste_masks_in_image``).
    """

    @configurable
    def __init__(
        self,
        *,
        channels_last: bool = False,
        precision: torch.dtype = torch.float32,
        tiling: TilingSettings | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if tiling is not None:
            check_tile_size(tiling, self.backbone)
        self.tiling = tiling
        self.channels_last = channels_last
        self.precision = precision
        self._weights_memory_format = torch.contiguous_format
        self._match_weights_layout()
        if channels_last or precision != torch.float32:
            fuse_convolutions(self)
        if precision != torch.float32:
            prepare_for_autocast(self)
            for name in FLOAT32_OUTPUT_MODULES:
                module = self._submodule_or_none(name)
                if module is not None:
                    module.register_forward_hook(_outputs_to_float32)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        ret = super().from_config(cfg)
        ret["channels_last"] = cfg.MODEL.MASKEXT.CHANNELS_LAST
        ret["precision"] = model_precision(cfg)
        ret["tiling"] = tiling_from_config(cfg)
        return ret

    def _submodule_or_none(self, name: str) -> nn.Module | None:
        try:
            return self.get_submodule(name)
        except AttributeError:
            return None

    @property
    def compute_settings(self) -> ComputeSettings:
        """What runs in the current mode on the model's current device (bfloat16 falls back to float32 where it
        is slow, and training runs NCHW where channels-last backward is slow)."""
        return resolve_compute_settings(self.channels_last, self.precision, self.device.type, self.training)

    def _match_weights_layout(self) -> MaskExtRCNN:
        """Convolution weights in the memory format of this mode on this device (:func:`runs_channels_last`);
        called whenever the mode or the device changes (``train``/``eval``, ``to``), so a trainer's optimizer
        and DDP see the training layout. Only the layout is asked here: a model is built on the CPU before it
        moves to its device, where a precision the CPU refuses (float16) may be the GPU's."""
        channels_last = runs_channels_last(self.channels_last, self.device.type, self.training)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if memory_format != self._weights_memory_format:
            self._weights_memory_format = memory_format
            super().to(memory_format=memory_format)
        return self

    def train(self, mode: bool = True) -> MaskExtRCNN:
        super().train(mode)
        return self._match_weights_layout()

    def to(self, *args, **kwargs) -> MaskExtRCNN:
        super().to(*args, **kwargs)
        return self._match_weights_layout()

    def _autocast(self) -> AbstractContextManager:
        dtype = self.compute_settings.autocast_dtype
        return nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def preprocess_image(self, batched_inputs: list[dict[str, Tensor]]) -> ImageList:
        images = super().preprocess_image(batched_inputs)
        if self.compute_settings.channels_last:
            images.tensor = images.tensor.contiguous(memory_format=torch.channels_last)
        return images

    def visualize_training(self, batched_inputs: list[dict], proposals: list[Instances]) -> None:
        """``VIS_PERIOD``'s TensorBoard images; ``RAW`` images (any dtype and band count, which Detectron2 cannot
        draw) are shown through the percentile stretch of :func:`to_display_rgb`."""
        if self.input_format != RAW_FORMAT:
            return super().visualize_training(batched_inputs, proposals)
        shown = [
            {**inputs, "image": torch.from_numpy(to_display_rgb(inputs["image"].permute(1, 2, 0).cpu().numpy())).permute(2, 0, 1)}
            for inputs in batched_inputs[:1]  # Detectron2 draws the first image of the batch only
        ]
        self.input_format = "RGB"
        try:
            super().visualize_training(shown, proposals[:1])
        finally:
            self.input_format = RAW_FORMAT

    def forward(self, batched_inputs: list[dict[str, Tensor]]):
        if not self.training:
            return self.inference(batched_inputs)
        with self._autocast():
            losses = super().forward(batched_inputs)
        return {name: value.float() for name, value in losses.items()}

    def inference(
        self,
        batched_inputs: list[dict[str, Tensor]],
        detected_instances: list[Instances] | None = None,
        do_postprocess: bool = True,
    ):
        if self.tiling is not None and detected_instances is None:
            return tiled_inference(self, batched_inputs, self.tiling, do_postprocess)
        with self._autocast():
            results = super().inference(batched_inputs, detected_instances, do_postprocess=False)
        results = [_instances_to_float32(r) for r in results]
        if not do_postprocess:
            return results
        for r in results:
            if r.has("pred_masks"):
                r.pred_masks = _SeparablePasteROIMasks(r.pred_masks[:, 0])
        image_sizes = [tuple(x["image"].shape[-2:]) for x in batched_inputs]
        return GeneralizedRCNN._postprocess(results, batched_inputs, image_sizes)
