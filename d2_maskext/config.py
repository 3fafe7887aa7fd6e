"""Every d2_maskext config key, with its default, in one place.

``add_maskext_config(cfg)`` adds the keys to *that* cfg only (Detectron2's global defaults are never
touched), so stock configs keep their exact behaviour unless they select a plugin component.
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN


def add_maskext_config(cfg: CN) -> CN:
    """Add all plugin keys to ``cfg`` (idempotent) and return it."""
    if cfg.get("MASKEXT_CONFIG_ADDED", False):
        return cfg
    _add_pooler_config(cfg)
    _add_head_config(cfg)
    _add_data_config(cfg)
    _add_eval_config(cfg)
    _add_reliability_config(cfg)
    cfg.MASKEXT_CONFIG_ADDED = True
    return cfg


def _add_pooler_config(cfg: CN) -> None:
    """RoIAlign implementation used by ``MaskExtROIHeads`` (issue: RoIAlign extension)."""
    cfg.MODEL.MASKEXT = CN()
    # "stock": Detectron2's ROIPooler (loop over FPN levels); "fused": one-call multi-level RoIAlign.
    cfg.MODEL.MASKEXT.POOLER = "stock"


def _add_head_config(cfg: CN) -> None:
    """Head variants (Mask Scoring, boundary, high-resolution, lightweight, Double-Head) and mask losses."""
    # Mask loss options, applied by every plugin mask head (Detectron2's MaskRCNNConvUpsampleHead keeps
    # its plain BCE; "MaskExtConvUpsampleHead" is the same network with these options).
    cfg.MODEL.ROI_MASK_HEAD.LOSS = CN()
    cfg.MODEL.ROI_MASK_HEAD.LOSS.WEIGHT = 1.0  # multiplies every mask loss term of the head
    cfg.MODEL.ROI_MASK_HEAD.LOSS.DICE_WEIGHT = 0.0  # adds a Dice loss term (0 = off)
    # Extra BCE weight on ground-truth boundary pixels: w = 1 + BOUNDARY_BCE_WEIGHT on the boundary (0 = off).
    cfg.MODEL.ROI_MASK_HEAD.LOSS.BOUNDARY_BCE_WEIGHT = 0.0
    # Boundary width in mask pixels, for boundary-weighted BCE and the boundary head's targets.
    cfg.MODEL.ROI_MASK_HEAD.LOSS.BOUNDARY_WIDTH = 1

    # BoundaryMaskHead: a boundary branch fused with the mask branch (BMask R-CNN).
    cfg.MODEL.ROI_MASK_HEAD.BOUNDARY = CN()
    cfg.MODEL.ROI_MASK_HEAD.BOUNDARY.NUM_CONV = 2
    cfg.MODEL.ROI_MASK_HEAD.BOUNDARY.LOSS_WEIGHT = 1.0  # for both its BCE and Dice terms

    # HighResMaskHead: 4x POOLER_RESOLUTION masks refined with finer FPN features. It pools its own
    # inputs, so configs using it set MODEL.ROI_MASK_HEAD.POOLER_TYPE "" and choose the pooler here.
    cfg.MODEL.ROI_MASK_HEAD.HIRES = CN()
    cfg.MODEL.ROI_MASK_HEAD.HIRES.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.ROI_MASK_HEAD.HIRES.FINE_FEATURE = "p2"
    cfg.MODEL.ROI_MASK_HEAD.HIRES.NUM_CONV = 2  # refinement convs at 2x POOLER_RESOLUTION

    # MaskIoU head of MaskScoringROIHeads (Mask Scoring R-CNN).
    cfg.MODEL.ROI_MASKIOU_HEAD = CN()
    cfg.MODEL.ROI_MASKIOU_HEAD.NUM_CONV = 4  # the last one has stride 2
    cfg.MODEL.ROI_MASKIOU_HEAD.CONV_DIM = 256
    cfg.MODEL.ROI_MASKIOU_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_MASKIOU_HEAD.FC_DIM = 1024
    cfg.MODEL.ROI_MASKIOU_HEAD.NORM = ""
    cfg.MODEL.ROI_MASKIOU_HEAD.LOSS_WEIGHT = 1.0

    # DoubleConvFCHead (with DoubleHeadROIHeads): conv branch for box regression, fc branch for classes.
    cfg.MODEL.ROI_BOX_HEAD.DOUBLE_HEAD = CN()
    cfg.MODEL.ROI_BOX_HEAD.DOUBLE_HEAD.CONV_DIM = 1024
    cfg.MODEL.ROI_BOX_HEAD.DOUBLE_HEAD.NUM_BLOCKS = 4  # bottleneck residual blocks


def _add_data_config(cfg: CN) -> None:
    """Built-in synthetic dataset, declared datasets, mapper choice and augmentation options."""
    cfg.DATASETS.SYNTHETIC = CN()
    # Where generated images and annotations are cached ("" = $D2MX_DATA or ./datasets/maskext_synth).
    cfg.DATASETS.SYNTHETIC.ROOT = ""
    cfg.INPUT.MAPPER = CN()
    # Name in d2_maskext's MAPPER_REGISTRY; "DatasetMapper" is Detectron2's own.
    cfg.INPUT.MAPPER.NAME = "DatasetMapper"


def _add_eval_config(cfg: CN) -> None:
    """Evaluation and report options."""
    cfg.TEST.EVAL = CN()
    # COCOeval's maxDets[2]: detections per image counted by AP (COCO's official value is 100).
    cfg.TEST.EVAL.MAX_DETS_PER_IMAGE = 100
    cfg.TEST.REPORT = CN()
    # Predictions below this score are left out of the confusion matrix and the worst-image panels.
    cfg.TEST.REPORT.SCORE_THRESHOLD = 0.5
    # IoU at which a prediction matches a ground-truth instance (confusion matrix, worst images, sweep).
    cfg.TEST.REPORT.IOU_THRESHOLD = 0.5
    # How many images with the lowest F1 are shown with ground truth and predictions side by side.
    cfg.TEST.REPORT.NUM_WORST_IMAGES = 8


def _add_reliability_config(cfg: CN) -> None:
    """Fault handling and untrusted-input options."""
    cfg.CHECKPOINT = CN()
    # Checkpoints are loaded weights-only (.pth: torch.load(weights_only=True); .pkl model-zoo files: numpy
    # arrays and containers only). True also unpickles arbitrary Python objects, which can run code: set it
    # only for files from a source you trust (e.g. legacy checkpoints holding custom classes).
    cfg.CHECKPOINT.ALLOW_UNSAFE_PICKLE = False
