"""Every d2_maskext config key, with its default, in one place.

``add_maskext_config(cfg)`` adds the keys to *that* cfg only (Detectron2's global defaults are never
touched), so stock configs keep their exact behaviour unless they select a plugin component.
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN
from omegaconf import DictConfig, OmegaConf


def add_maskext_config(cfg: CN) -> CN:
    """Add all plugin keys to ``cfg`` and return it; a cfg that has them already is returned unchanged."""
    if "MASKEXT" in cfg.MODEL:
        return cfg
    _add_pooler_config(cfg)
    _add_compute_config(cfg)
    _add_head_config(cfg)
    _add_data_config(cfg)
    _add_eval_config(cfg)
    _add_reliability_config(cfg)
    _add_tiling_config(cfg)
    _add_training_loop_config(cfg)
    return cfg


def _add_pooler_config(cfg: CN) -> None:
    """RoIAlign implementation used by ``MaskExtROIHeads``."""
    cfg.MODEL.MASKEXT = CN()
    # "stock": Detectron2's ROIPooler (loop over FPN levels); "fused": one-call multi-level RoIAlign.
    cfg.MODEL.MASKEXT.POOLER = "stock"


def _add_compute_config(cfg: CN) -> None:
    """Memory format and precision of ``MaskExtRCNN`` (``MODEL.META_ARCHITECTURE: MaskExtRCNN``), applied in
    training and inference alike where the device is fast at them (``modeling/precision.py`` decides)."""
    # Convolution weights and activations in channels-last (NHWC) memory format (training stays NCHW on a CPU
    # without native bfloat16, where channels-last backward is slower).
    cfg.MODEL.MASKEXT.CHANNELS_LAST = False
    # The model's compute dtype in training AND inference: "float32", "bfloat16" (CPU with AVX512-BF16/AMX
    # or GPU; float32 runs on CPUs without them, float16 on GPUs without bfloat16, each with a warning) or
    # "float16" (GPU only). SOLVER.AMP.ENABLED instead autocasts the training loop only (float16 with loss
    # scaling on GPU, bfloat16 on CPU). With both set, this dtype wins and AMP adds the loss scaling, which
    # float16 training needs. Boxes, scores, losses, mask pasting and weights stay float32.
    cfg.MODEL.MASKEXT.PRECISION = "float32"


def _add_head_config(cfg: CN) -> None:
    """Head variants (Mask Scoring, boundary, high-resolution, lightweight, Double-Head) and mask losses."""
    # Mask loss options, applied by every plugin mask head. Detectron2's MaskRCNNConvUpsampleHead keeps its
    # plain BCE, so MaskExtROIHeads refuses them with it: "MaskExtConvUpsampleHead" is the same network
    # with these options.
    cfg.MODEL.ROI_MASK_HEAD.LOSS = CN()
    cfg.MODEL.ROI_MASK_HEAD.LOSS.WEIGHT = 1.0  # multiplies every mask loss term of the head
    cfg.MODEL.ROI_MASK_HEAD.LOSS.DICE_WEIGHT = 0.0  # adds a Dice loss term (0 = off)
    # Extra BCE weight on ground-truth boundary pixels: w = 1 + BOUNDARY_BCE_WEIGHT on the boundary (0 = off).
    cfg.MODEL.ROI_MASK_HEAD.LOSS.BOUNDARY_BCE_WEIGHT = 0.0
    # Boundary width in mask pixels, for boundary-weighted BCE and the boundary head's targets.
    cfg.MODEL.ROI_MASK_HEAD.LOSS.BOUNDARY_WIDTH = 1

    # BoundaryMaskHead: a boundary branch fused with the mask branch (BMask R-CNN).
    cfg.MODEL.ROI_MASK_HEAD.BOUNDARY = CN()
    cfg.MODEL.ROI_MASK_HEAD.BOUNDARY.NUM_CONV = 2  # 3x3 convs of the boundary branch
    cfg.MODEL.ROI_MASK_HEAD.BOUNDARY.LOSS_WEIGHT = 1.0  # for both its BCE and Dice terms

    # HighResMaskHead: 4x POOLER_RESOLUTION masks refined with finer FPN features. It pools its own
    # inputs, so it needs MODEL.ROI_MASK_HEAD.POOLER_TYPE "" (Detectron2's convention, as for PointRend);
    # its poolers use POOLER_RESOLUTION and POOLER_SAMPLING_RATIO.
    cfg.MODEL.ROI_MASK_HEAD.HIRES = CN()
    cfg.MODEL.ROI_MASK_HEAD.HIRES.POOLER_TYPE = "ROIAlignV2"  # the head's own poolers
    cfg.MODEL.ROI_MASK_HEAD.HIRES.FINE_FEATURE = "p2"  # FPN level (in ROI_HEADS.IN_FEATURES) that refines
    cfg.MODEL.ROI_MASK_HEAD.HIRES.NUM_CONV = 2  # refinement convs at 2x POOLER_RESOLUTION

    # MaskIoU head of MaskScoringROIHeads (Mask Scoring R-CNN).
    cfg.MODEL.ROI_MASKIOU_HEAD = CN()
    cfg.MODEL.ROI_MASKIOU_HEAD.NUM_CONV = 4  # the last one has stride 2
    cfg.MODEL.ROI_MASKIOU_HEAD.CONV_DIM = 256  # channels of each conv
    cfg.MODEL.ROI_MASKIOU_HEAD.NUM_FC = 2  # fully connected layers after the convs
    cfg.MODEL.ROI_MASKIOU_HEAD.FC_DIM = 1024  # width of each fully connected layer
    cfg.MODEL.ROI_MASKIOU_HEAD.NORM = ""  # normalization of the convs: "" (none), "GN", "BN", ...
    cfg.MODEL.ROI_MASKIOU_HEAD.LOSS_WEIGHT = 1.0  # of the L2 loss between predicted and actual mask IoU

    # DoubleConvFCHead (under MaskExtROIHeads, which builds its predictor): conv branch for box regression,
    # fc branch for classes.
    cfg.MODEL.ROI_BOX_HEAD.DOUBLE_HEAD = CN()
    cfg.MODEL.ROI_BOX_HEAD.DOUBLE_HEAD.CONV_DIM = 1024  # channels of the conv branch
    cfg.MODEL.ROI_BOX_HEAD.DOUBLE_HEAD.NUM_BLOCKS = 4  # bottleneck residual blocks


def _add_data_config(cfg: CN) -> None:
    """Declared datasets, mapper choice, fault handling and augmentation options."""
    # Datasets registered at start-up in every process, without code: a list of mappings with keys name,
    # format (coco, labelme, binary_masks, instance_id_png, label_maps, voc_instances, yolo), image_root,
    # annotations (label_maps: mask_root), and optionally thing_classes (list or names file), class_map
    # (instance_id_png, label_maps), crowd_as_instances (coco), split_components and min_component_area
    # (binary_masks), mask_suffix, class_root and class_suffix (label_maps), split (yolo data.yaml, no
    # image_root). See docs/datasets.md.
    cfg.DATASETS.REGISTER = []
    # Paths inside annotation files (COCO file_name, LabelMe imagePath) must stay inside image_root.
    cfg.DATASETS.ALLOW_PATHS_OUTSIDE_ROOT = False
    cfg.INPUT.MAPPER = CN()
    # Name in d2_maskext's MAPPER_REGISTRY: "MaskExtDatasetMapper" (Detectron2's DatasetMapper, same outputs,
    # faster, fault tolerant), "LSJDatasetMapper", "CopyPasteDatasetMapper", or "DatasetMapper" (Detectron2's).
    cfg.INPUT.MAPPER.NAME = "MaskExtDatasetMapper"
    # A training image that cannot be read: "skip" (logged, counted, another image is sampled) or "raise".
    cfg.INPUT.MAPPER.ON_BAD_IMAGE = "skip"
    # Stop when this many training images in a row could not be read (0: never).
    cfg.INPUT.MAPPER.MAX_CONSECUTIVE_BAD_IMAGES = 20
    # Large-scale jitter: resize to a random scale of IMAGE_SIZE x IMAGE_SIZE, then crop/pad to that size.
    cfg.INPUT.LSJ = CN()
    cfg.INPUT.LSJ.IMAGE_SIZE = 1024  # side of the square training image, in pixels
    cfg.INPUT.LSJ.MIN_SCALE = 0.1  # smallest random scale of IMAGE_SIZE
    cfg.INPUT.LSJ.MAX_SCALE = 2.0  # largest random scale of IMAGE_SIZE
    cfg.INPUT.LSJ.PAD_VALUE = 128.0  # value of padded pixels, in 8-bit units
    # Simple Copy-Paste: probability that a training image receives instances of another one.
    cfg.INPUT.COPY_PASTE = CN()
    cfg.INPUT.COPY_PASTE.PROB = 1.0  # probability of pasting into each training image
    # Colour jitter for any plugin mapper (training only); 0 disables one effect.
    cfg.INPUT.PHOTOMETRIC = CN()
    cfg.INPUT.PHOTOMETRIC.ENABLED = False  # turns the colour jitter below on
    cfg.INPUT.PHOTOMETRIC.BRIGHTNESS = 0.3  # factor in [1 - x, 1 + x]
    cfg.INPUT.PHOTOMETRIC.CONTRAST = 0.3  # factor in [1 - x, 1 + x] around the mean grey
    cfg.INPUT.PHOTOMETRIC.SATURATION = 0.3  # factor in [1 - x, 1 + x]
    cfg.INPUT.PHOTOMETRIC.HUE = 0.03  # rotation of up to x turns of the hue circle
    cfg.INPUT.PHOTOMETRIC.LIGHTING = 0.1  # std of AlexNet PCA lighting


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


def _add_tiling_config(cfg: CN) -> None:
    """Tiled inference of ``MaskExtRCNN`` on large scenes (docs/large_images.md): tiles are cut from the
    full-resolution image (needs ``INPUT.MIN_SIZE_TEST: 0``) and detections merged across tiles by mask overlap."""
    cfg.MODEL.MASKEXT.TILING = CN()
    cfg.MODEL.MASKEXT.TILING.SIZE = 0  # tile side in input pixels; 0 = whole-image inference (stock)
    cfg.MODEL.MASKEXT.TILING.OVERLAP = 0.2  # overlap of neighbouring tiles, as a fraction of SIZE
    # Each tile's own test-time resize (shortest edge, longest-edge cap); 0 = the tile runs as cut.
    cfg.MODEL.MASKEXT.TILING.MIN_SIZE_TEST = 0
    cfg.MODEL.MASKEXT.TILING.MAX_SIZE_TEST = 0  # longest-edge cap of that resize; 0 = no cap
    cfg.MODEL.MASKEXT.TILING.BATCH_SIZE = 4  # tiles per backbone batch
    # Also run the whole image downscaled to SIZE, keeping its objects larger than the overlap.
    cfg.MODEL.MASKEXT.TILING.WHOLE_IMAGE_PASS = False
    # Same-class detections of different tiles are one object when their masks overlap this much: "ios"
    # (intersection over the smaller mask) or "iou", counted where both tiles saw the scene.
    cfg.MODEL.MASKEXT.TILING.MERGE_METRIC = "ios"
    cfg.MODEL.MASKEXT.TILING.MERGE_THRESHOLD = 0.5  # the overlap (MERGE_METRIC) that merges, in (0, 1]
    cfg.MODEL.MASKEXT.TILING.MAX_DETECTIONS = 1000  # per image, after merging
    # Masks as compressed COCO RLEs in the Instances field "pred_masks_rle" instead of image-size pred_masks.
    cfg.MODEL.MASKEXT.TILING.RLE_OUTPUT = False


def _add_training_loop_config(cfg: CN) -> None:
    """Validation loss, best checkpoint, early stopping and evaluation images (docs/training.md)."""
    # Every N iterations the training losses on a fixed subset of DATASETS.TEST (no gradients), logged as
    # validation/<loss> and validation/total_loss; 0 = off.
    cfg.TEST.VAL_LOSS_PERIOD = 0
    cfg.TEST.VAL_LOSS_IMAGES = 50  # images per test dataset, evenly spaced through it, the same every time
    # Test images shown in TensorBoard at each evaluation, ground truth beside predictions; 0 = off.
    cfg.TEST.VIS_IMAGES = 4
    cfg.TEST.VIS_SCORE_THRESHOLD = 0.5  # predictions drawn in those images score at least this
    cfg.SOLVER.BEST_CHECKPOINT = CN()
    # Metric that picks model_best.pth (with best_metric.json) after each evaluation, e.g. "segm/AP",
    # "bbox/AP", "boundary/AP", "validation/total_loss" (with TEST.VAL_LOSS_PERIOD); "" = off.
    cfg.SOLVER.BEST_CHECKPOINT.METRIC = ""
    cfg.SOLVER.BEST_CHECKPOINT.MODE = "max"  # "max" (AP) or "min" (losses)
    cfg.SOLVER.EARLY_STOPPING = CN()
    # Stop after this many evaluations in a row without an improvement of the best-checkpoint metric by
    # more than MIN_DELTA; the final evaluation then runs on model_best.pth. 0 = off.
    cfg.SOLVER.EARLY_STOPPING.PATIENCE = 0
    cfg.SOLVER.EARLY_STOPPING.MIN_DELTA = 0.0  # an improvement must exceed this to reset the patience


def lazy_dataset_names(cfg: DictConfig, split: str) -> list[str]:
    """The dataset names of a LazyConfig's ``dataloader.<split>.dataset.names`` (one name or several) as a
    list; empty when the config has none."""
    names = OmegaConf.select(cfg, f"dataloader.{split}.dataset.names")
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)
