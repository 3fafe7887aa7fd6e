"""A Detectron2 Mask R-CNN as a function of one image tensor to four tensors, in a form every exporter takes.

``GeneralizedRCNN.inference`` takes and returns Python objects (dicts, ``Instances``) and branches on data
(``if not valid_mask.all()``, ``keep.sum().item()``, the box count of ``batched_nms``), which
``torch.export`` cannot turn into a graph. :class:`MaskRCNNExportAdapter` runs the model's own modules
(backbone, RPN head, anchors, box and mask heads, poolers) and replaces only the glue between them with
branch-free tensor code that gives the same detections: non-finite and empty boxes are dropped by masks
whatever their count, NMS runs per class by the coordinate offset trick, and padding is computed from the
symbolic image size.

``Instances`` needs ``len()``, a Python int, which a data-dependent count (after NMS) cannot give inside
``torch.export``; so proposals are padded to ``POST_NMS_TOPK_TEST`` rows and detections to
``DETECTIONS_PER_IMAGE`` rows, with a validity mask. The padded proposals go through the box head like real
ones (each row is computed on its own). The mask head, the costliest per row, runs on the real detections
only when its inference is Detectron2's standard one on pooled features (:func:`pooled_mask_layers`): the
adapter pools and calls the head's ``layers`` itself, without ``Instances``. Other mask stages (Mask Scoring's
rescoring, heads that pool their own features) run through ``forward_with_given_boxes`` on the padded rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.modeling.roi_heads.mask_head import BaseMaskRCNNHead
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import nms

from ..modeling.roi_heads.mask_heads import MaskExtHead

__all__ = ["OUTPUT_NAMES", "MaskRCNNExportAdapter", "UnsupportedModelError", "check_exportable", "pooled_mask_layers"]

OUTPUT_NAMES = ("boxes", "scores", "classes", "masks")


class UnsupportedModelError(ValueError):
    """The model has a component whose inference the export adapter does not reproduce."""


def check_exportable(model: nn.Module) -> None:
    """Raises :class:`UnsupportedModelError` naming the component the adapter cannot export exactly."""
    if not isinstance(model, GeneralizedRCNN):
        raise UnsupportedModelError(
            f"export supports GeneralizedRCNN-based meta architectures, got {type(model).__name__}"
        )
    if model.backbone.padding_constraints.get("square_size", 0):
        raise UnsupportedModelError("export pads images to the size divisibility; square padding is not supported")
    rpn = model.proposal_generator
    if type(rpn) is not RPN:
        raise UnsupportedModelError(f"export supports the stock RPN proposal generator, got {type(rpn).__name__}")
    heads = model.roi_heads
    if not isinstance(heads, StandardROIHeads):
        raise UnsupportedModelError(
            f"export supports StandardROIHeads and its subclasses, got {type(heads).__name__}"
        )
    for method in ("forward", "_forward_box"):
        if getattr(type(heads), method) is not getattr(StandardROIHeads, method):
            raise UnsupportedModelError(
                f"export reproduces StandardROIHeads' box stage; {type(heads).__name__}.{method} replaces it"
            )
    if not heads.mask_on:
        raise UnsupportedModelError("export needs a mask head: set MODEL.MASK_ON True")
    if heads.keypoint_on:
        raise UnsupportedModelError("export does not support keypoint heads: set MODEL.KEYPOINT_ON False")


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each group, indices sorted by decreasing score; no branch on the (possibly zero) box count.

    Groups are separated by shifting each group's boxes beyond the others, as torchvision does for small
    inputs; the shift is taken over the boxes and a zero so that it is defined for no boxes too.

    torchvision's fake ``nms`` (what ``torch.export`` traces) declares that at least two boxes are kept, and
    the exported program and the AOTInductor package assert it at run time: an image whose NMS kept 0 or 1
    boxes (one object, or none) was refused. So two sentinel boxes, each in a group of its own and scored
    below every box, go in with the others; NMS always keeps them, and they are dropped from its result.
    """
    boxes = boxes.float()
    count = boxes.shape[0]
    sentinel_groups = torch.cat([groups, groups.new_zeros(1)]).max() + torch.arange(1, 3, device=groups.device)
    boxes = torch.cat([boxes, boxes.new_tensor([[0.0, 0.0, 1.0, 1.0]]).expand(2, 4)])
    scores = torch.cat([scores.float(), scores.new_full((2,), torch.finfo(torch.float32).min, dtype=torch.float32)])
    groups = torch.cat([groups, sentinel_groups.to(groups.dtype)])
    extent = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max() + 1
    shifted = boxes + (groups.to(boxes) * extent)[:, None]
    keep = nms(shifted, scores, iou_threshold)
    return keep[keep < count]


def pooled_mask_layers(heads: StandardROIHeads) -> Callable[[Tensor], Tensor] | None:
    """The mask head's ``layers`` when the mask stage is ``mask_rcnn_inference(layers(pooled features))``:
    StandardROIHeads' own ``forward_with_given_boxes`` and ``_forward_mask`` with its mask pooler, and a head
    that infers as Detectron2's ``BaseMaskRCNNHead`` or the plugin's ``MaskExtHead`` does. ``None`` for any
    other mask stage."""
    head = heads.mask_head
    for method in ("forward_with_given_boxes", "_forward_mask"):
        if getattr(type(heads), method) is not getattr(StandardROIHeads, method):
            return None
    if heads.mask_pooler is None:
        return None
    if type(head).forward is BaseMaskRCNNHead.forward:
        return head.layers
    if type(head).forward is MaskExtHead.forward and type(head).head_inputs is MaskExtHead.head_inputs:
        return head.layers
    return None


def _pad_index(index: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """``index`` padded with -1 (or cut) to ``length`` entries, and the mask of real entries.

    Indexing a tensor with one extra row appended (see :func:`_with_spare_row`) by the padded index gives
    a fixed number of rows, whatever ``index``'s data-dependent length.
    """
    padded = torch.cat([index, index.new_full((length,), -1)])[:length]
    return padded, padded >= 0


def _with_spare_row(values: Tensor) -> Tensor:
    """``values`` with one zero row appended, the row a -1 index of :func:`_pad_index` reads."""
    return torch.cat([values, values.new_zeros((1, *values.shape[1:]))])


def _clip(boxes: Tensor, height: int, width: int) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(dim=-1)
    return torch.stack(
        [x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)], dim=-1
    )


def _level_top_k(count, k: int):
    """``min(count, k)`` for a plain, symbolic (export) or traced (a tensor) count."""
    if isinstance(count, Tensor):
        return torch.clamp(count, max=k)
    return torch.sym_min(count, k)


class MaskRCNNExportAdapter(nn.Module):
    """``forward(image)`` → ``(boxes, scores, classes, masks)`` for one float32 ``[3, H, W]`` BGR 0–255 image.

    ``boxes`` ``[N, 4]`` (x1, y1, x2, y2 in input pixels), ``scores`` ``[N]``, ``classes`` ``[N]`` int64,
    ``masks`` ``[N, 1, M, M]`` probabilities before pasting — the fields of ``model.inference(...,
    do_postprocess=False)``. The network runs in float32 whatever the model's compute settings.
    """

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        check_exportable(model)
        self.model = model
        self.eval()

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        model = self.model
        images = self._preprocess(image)
        features = model.backbone(images.tensor)
        height, width = images.image_sizes[0]
        proposals, real_proposals = self._proposals(features, height, width)
        detections, real = self._detections(features, proposals, real_proposals, height, width)
        layers = pooled_mask_layers(model.roi_heads)
        if layers is None:
            detections = model.roi_heads.forward_with_given_boxes(features, [detections])[0]
            return (
                detections.pred_boxes.tensor[real],
                detections.scores[real],
                detections.pred_classes[real],
                detections.pred_masks[real],
            )
        boxes, classes = detections.pred_boxes.tensor[real], detections.pred_classes[real]
        return boxes, detections.scores[real], classes, self._masks(features, boxes, classes, layers)

    def _masks(
        self, features: dict[str, Tensor], boxes: Tensor, classes: Tensor, layers: Callable[[Tensor], Tensor]
    ) -> Tensor:
        """``mask_rcnn_inference``'s probabilities for the real detections only, with no ``Instances``.

        One spare row (the zero row of :func:`_with_spare_row`, as a padded row is) rides along and is dropped:
        ``Boxes`` branches on an empty tensor, which a count that may be zero does not allow inside
        ``torch.export``; one more row makes it non-empty."""
        heads: StandardROIHeads = self.model.roi_heads
        boxes, classes = _with_spare_row(boxes), _with_spare_row(classes)
        pooled = heads.mask_pooler([features[f] for f in heads.mask_in_features], [Boxes(boxes)])
        logits = layers(pooled)
        if logits.shape[1] > 1:  # one mask per class: the detection's own
            logits = logits[torch.arange(logits.shape[0], device=logits.device), classes][:, None]
        return logits.sigmoid()[:-1]

    def _preprocess(self, image: Tensor) -> ImageList:
        model = self.model
        normalized = (image - model.pixel_mean) / model.pixel_std
        divisibility = model.backbone.size_divisibility
        if torch.jit.is_tracing():  # Detectron2's padding records the sizes as traced values
            return ImageList.from_tensors(
                [normalized], divisibility, padding_constraints=model.backbone.padding_constraints
            )
        height, width = image.shape[-2:]
        if divisibility > 1:
            # Written as a multiple of the divisibility, so that the exporter can prove the FPN levels' sizes.
            padded_height = (height + divisibility - 1) // divisibility * divisibility
            padded_width = (width + divisibility - 1) // divisibility * divisibility
            normalized = F.pad(normalized, (0, padded_width - width, 0, padded_height - height))
        return ImageList(normalized[None], [(height, width)])

    def _proposals(self, features: dict[str, Tensor], height: int, width: int) -> tuple[Instances, Tensor]:
        """RPN proposals of the single image, as ``RPN.forward`` + ``find_top_rpn_proposals`` at inference,
        padded to ``POST_NMS_TOPK_TEST``, and the mask of the real ones."""
        rpn: RPN = self.model.proposal_generator
        level_features = [features[name] for name in rpn.in_features]
        anchors = rpn.anchor_generator(level_features)
        logits, deltas = rpn.rpn_head(level_features)
        box_dim = rpn.anchor_generator.box_dim
        pre_nms_topk = rpn.pre_nms_topk[False]
        boxes_per_level, scores_per_level, levels_per_level = [], [], []
        for level, (anchors_l, logits_l, deltas_l) in enumerate(zip(anchors, logits, deltas)):
            scores_l = logits_l[0].permute(1, 2, 0).flatten()  # (Hi * Wi * A), anchor-major as the anchors
            deltas_l = deltas_l[0].view(-1, box_dim, *deltas_l.shape[-2:]).permute(2, 3, 0, 1).reshape(-1, box_dim)
            top_scores, top_index = scores_l.topk(_level_top_k(scores_l.shape[0], pre_nms_topk))
            decoded = rpn.box2box_transform.apply_deltas(deltas_l[top_index], anchors_l.tensor[top_index])
            boxes_per_level.append(decoded)
            scores_per_level.append(top_scores)
            levels_per_level.append(torch.full_like(top_index, level))
        boxes = torch.cat(boxes_per_level)
        scores = torch.cat(scores_per_level)
        levels = torch.cat(levels_per_level)
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        boxes = _clip(boxes, height, width)
        sides = boxes[:, 2:] - boxes[:, :2]
        keep = finite & (sides > rpn.min_box_size).all(dim=1)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep, real = _pad_index(batched_nms(boxes, scores, levels, rpn.nms_thresh), rpn.post_nms_topk[False])
        proposals = Instances((height, width))
        proposals.proposal_boxes = Boxes(_with_spare_row(boxes)[keep])
        proposals.objectness_logits = _with_spare_row(scores)[keep]
        return proposals, real

    def _detections(
        self, features: dict[str, Tensor], proposals: Instances, real_proposals: Tensor, height: int, width: int
    ) -> tuple[Instances, Tensor]:
        """Scored, class-wise NMS'd boxes, as ``StandardROIHeads._forward_box`` + ``fast_rcnn_inference``,
        padded to ``DETECTIONS_PER_IMAGE``, and the mask of the real ones."""
        heads: StandardROIHeads = self.model.roi_heads
        predictor = heads.box_predictor
        box_features = heads.box_pooler([features[f] for f in heads.box_in_features], [proposals.proposal_boxes])
        predictions = predictor(heads.box_head(box_features))
        boxes = predictor.predict_boxes(predictions, [proposals])[0]
        scores = predictor.predict_probs(predictions, [proposals])[0]
        usable = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1) & real_proposals
        scores = scores[:, :-1]
        boxes = _clip(boxes.reshape(boxes.shape[0], -1, 4), height, width)
        candidates = (scores > predictor.test_score_thresh) & usable[:, None]
        index = candidates.nonzero()
        boxes = boxes[index[:, 0], 0] if boxes.shape[1] == 1 else boxes[candidates]
        scores = scores[candidates]
        classes = index[:, 1]
        limit = predictor.test_topk_per_image
        if limit < 0:
            limit = candidates.numel()
        keep, real = _pad_index(batched_nms(boxes, scores, classes, predictor.test_nms_thresh), limit)
        detections = Instances((height, width))
        detections.pred_boxes = Boxes(_with_spare_row(boxes)[keep])
        detections.scores = _with_spare_row(scores)[keep]
        detections.pred_classes = _with_spare_row(classes)[keep]
        return detections, real
