"""Run a trained model on images (files, folders, globs) or a video; write overlays and the predictions.

Outputs in ``output_dir``: ``overlays/`` (one PNG per image, or ``<video>.mp4``) and, per output format,
``coco``: ``predictions.json`` (COCO results with RLE masks, dataset category ids) and ``images.json`` (a
COCO file with the images and categories the results refer to, so
``COCO("images.json").loadRes("predictions.json")`` works); ``labelme/``, ``cvat/annotations.xml`` and
``geojson/``: the masks as polygons for annotation tools (``data.writers``, docs/predictions_out.md).

Nothing here reads a dataset: class names come with the ``Metadata`` the caller passes, so predicting on a
folder never needs the training data on disk.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer
from pycocotools.coco import COCO
from torch import nn
from tqdm import tqdm

from .checkpoint import SafeCheckpointer
from .data.writers import (
    DEFAULT_POLYGON_TOLERANCE,
    POLYGON_FORMATS,
    ImagePolygons,
    InstancePolygons,
    PolygonStats,
    build_writer,
    polygonize_instances,
)
from .evaluation.coco_evaluator import instances_to_coco_results
from .evaluation.coco_metrics import load_coco_json
from .utils.image_io import (
    IMAGE_EXTENSIONS,
    RAW_FORMAT,
    ImageReadError,
    check_channel_count,
    list_images,
    read_image,
)
from .utils.rle import RLE_FIELD
from .visualization import to_display_rgb

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
GLOB_CHARACTERS = frozenset("*?[")
OUTPUT_FORMATS = ("coco", *POLYGON_FORMATS)


class BatchPredictor:
    """Detectron2's ``DefaultPredictor`` (same test-time resize and input format) that also runs a batch,
    for a model built from any config (YAML or lazy), and takes ``RAW`` images (float32 HWC, one channel per
    ``MODEL.PIXEL_MEAN`` value), which ``DefaultPredictor`` refuses."""

    def __init__(self, model: nn.Module, resize: T.Augmentation, input_format: str = "BGR"):
        if input_format not in ("BGR", "RGB", RAW_FORMAT):
            raise ValueError(f"input format must be 'BGR', 'RGB' or 'RAW', got {input_format!r}")
        self.model = model.eval()
        pixel_mean = getattr(model, "pixel_mean", None)
        self.num_channels = pixel_mean.numel() if pixel_mean is not None else 3
        self.resize = resize
        self.input_format = input_format

    @classmethod
    def from_cfg(cls, cfg: CfgNode) -> BatchPredictor:
        """The YAML config's model with ``MODEL.WEIGHTS`` loaded through ``SafeCheckpointer``, so an untrusted
        file cannot run code."""
        model = build_model(cfg)
        SafeCheckpointer.from_config(cfg, model).load(cfg.MODEL.WEIGHTS)
        size = cfg.INPUT.MIN_SIZE_TEST
        return cls(model, T.ResizeShortestEdge([size, size], cfg.INPUT.MAX_SIZE_TEST), cfg.INPUT.FORMAT)

    def __call__(self, image_bgr: np.ndarray) -> dict:
        """Model output for one BGR uint8 image (``RAW``: float32 HWC), as ``DefaultPredictor``."""
        return self.predict_batch([image_bgr])[0]

    def predict_batch(self, images_bgr: Sequence[np.ndarray]) -> list[dict]:
        """Model outputs for BGR uint8 images (``RAW``: float32 HWC), in one forward pass."""
        with torch.inference_mode():
            return self.model([self._model_input(image) for image in images_bgr])

    def _model_input(self, image_bgr: np.ndarray) -> dict:
        if self.input_format == RAW_FORMAT:
            check_channel_count(image_bgr, self.num_channels, "input image")
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        return {
            "image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
            "height": height,
            "width": width,
        }


@dataclass(frozen=True)
class Frame:
    """One image to predict: its name in the outputs and its pixels (BGR; float32 HWC for ``RAW``)."""

    name: str
    image_bgr: np.ndarray


@dataclass(frozen=True)
class ImageInput:
    """An image file and its name in the outputs (relative to the folder it was found in)."""

    path: Path
    name: str


@dataclass(frozen=True)
class PredictSummary:
    """What was predicted and written. ``outputs``: format -> the file or folder it wrote (COCO: the
    results file). ``polygons``: what the polygon formats left out (empty masks, parts under min_area).
    ``image_files``: image id -> the input file (images only), e.g. for ``write_fiftyone_dataset``."""

    num_images: int
    num_skipped: int
    num_instances: int
    predictions_json: Path | None
    images_json: Path | None
    overlays: Path
    outputs: dict[str, Path]
    polygons: PolygonStats
    image_files: dict[int, Path]


def _read_images(inputs: Sequence[ImageInput], skipped: list[str], predictor: BatchPredictor) -> Iterator[Frame]:
    raw = predictor.input_format == RAW_FORMAT
    for index, item in enumerate(inputs):
        try:
            image = read_image(item.path, RAW_FORMAT if raw else "BGR")
        except ImageReadError as e:
            logger.warning("skipping image %d %s: cannot read it (%s)", index, item.path, e)
            skipped.append(str(item.path))
            continue
        if raw:
            check_channel_count(image, predictor.num_channels, item.path)
        yield Frame(item.name, image)


def _read_video(path: Path) -> Iterator[Frame]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"{path}: cannot open the video")
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield Frame(f"{path.name}#{index:06d}", frame)
            index += 1
    finally:
        capture.release()


def _batches(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    while batch := list(islice(frames, size)):
        yield batch


class _CategoryIds:
    """Model class index -> dataset category id and class names (from the ground truth if given)."""

    def __init__(self, metadata: Metadata, gt_categories: list[dict] | None):
        classes = list(metadata.get("thing_classes", []))
        if not classes:
            raise ValueError("metadata must name the model's classes (thing_classes, one per class)")
        if gt_categories is not None:
            cats = sorted(gt_categories, key=lambda c: c["id"])
            if len(cats) != len(classes):
                raise ValueError(
                    f"ground truth has {len(cats)} categories, the model predicts {len(classes)} classes"
                )
            self.ids, self.names = [c["id"] for c in cats], [c["name"] for c in cats]
        else:
            mapping = metadata.get("thing_dataset_id_to_contiguous_id")
            reverse = {v: k for k, v in mapping.items()} if mapping else {}
            self.ids = [reverse.get(i, i) for i in range(len(classes))]
            self.names = classes
        self.metadata = Metadata(thing_classes=self.names)


def _image_ids(frame_names: Sequence[str], gt: COCO, gt_json: Path) -> dict[str, int]:
    """Ground-truth image id of each input, by relative path or else by file name."""
    by_name = {img["file_name"]: img_id for img_id, img in gt.imgs.items()}
    by_base = {Path(name).name: img_id for name, img_id in by_name.items()}
    ids, unknown = {}, []
    for name in frame_names:
        img_id = by_name.get(name, by_base.get(Path(name).name))
        if img_id is None:
            unknown.append(name)
        ids[name] = img_id
    if unknown:
        raise ValueError(
            f"{gt_json}: {len(unknown)} input images have no entry with that file_name, e.g. {unknown[:3]}"
        )
    return ids


def _expand(source: str | Path) -> list[ImageInput]:
    """The images of one ``--input`` item: an image file, a folder (searched recursively) or a glob."""
    text = str(source)
    if GLOB_CHARACTERS & set(text):
        matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
        images = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            raise ValueError(f"{text}: the pattern matches no image (extensions {sorted(IMAGE_EXTENSIONS)})")
        return [ImageInput(m, m.name) for m in images]
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such image, folder or video")
    if path.is_dir():
        images = [ImageInput(path / relative, Path(relative).as_posix()) for relative in list_images(path)]
        if not images:
            raise ValueError(f"{path}: no images with extensions {sorted(IMAGE_EXTENSIONS)}")
        return images
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(
            f"{path}: unknown file type (images: {sorted(IMAGE_EXTENSIONS)}, videos: {sorted(VIDEO_EXTENSIONS)})"
        )
    return [ImageInput(path, path.name)]


def resolve_images(sources: Sequence[str | Path]) -> list[ImageInput]:
    """Every image of ``sources`` once, in order; refuses two images whose overlays would share a name."""
    inputs: dict[Path, ImageInput] = {}
    for source in sources:
        for item in _expand(source):
            inputs.setdefault(item.path.resolve(), item)
    by_overlay: dict[str, ImageInput] = {}
    for item in inputs.values():
        overlay = Path(item.name).with_suffix(".png").as_posix()
        if overlay in by_overlay:
            raise ValueError(
                f"{by_overlay[overlay].path} and {item.path} would both write overlays/{overlay}; "
                "rename one or predict them separately"
            )
        by_overlay[overlay] = item
    return list(inputs.values())


def is_video(source: str | Path) -> bool:
    return Path(source).suffix.lower() in VIDEO_EXTENSIONS


def _video_info(path: Path) -> tuple[int, float]:
    """(frame count, frames per second; 25 when the container does not say)."""
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), capture.get(cv2.CAP_PROP_FPS) or 25.0
    finally:
        capture.release()


def predict(
    predictor: BatchPredictor,
    metadata: Metadata,
    sources: str | Path | Sequence[str | Path],
    output_dir: str | Path,
    batch_size: int = 4,
    gt_json: str | Path | None = None,
    output_formats: Sequence[str] = ("coco",),
    polygon_tolerance: float = DEFAULT_POLYGON_TOLERANCE,
    min_area: float = 0.0,
) -> PredictSummary:
    """Predict every image of ``sources`` (image files, folders, glob patterns; or one video file).

    ``metadata`` names the model's classes (``thing_classes``) and may map them to dataset category ids
    (``thing_dataset_id_to_contiguous_id``). With ``gt_json`` (a COCO file), image and category ids follow
    it, so the results can be evaluated with ``tools/eval_report.py --predictions ... --gt ...``.

    ``output_formats``: any of ``OUTPUT_FORMATS``. The polygon formats (images only) simplify each ring
    by ``polygon_tolerance`` pixels (Douglas-Peucker) and drop parts and holes under ``min_area`` pixels;
    an instance left without a polygon is not written to them and is counted in ``summary.polygons``.
    """
    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    output_dir = Path(output_dir)
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    formats = list(dict.fromkeys(output_formats))
    unknown = [f for f in formats if f not in OUTPUT_FORMATS]
    if unknown or not formats:
        raise ValueError(f"output formats must be some of {list(OUTPUT_FORMATS)}, got {list(output_formats)}")
    if polygon_tolerance < 0 or min_area < 0:
        raise ValueError(f"polygon tolerance and min area must be >= 0, got {polygon_tolerance} and {min_area}")
    polygon_formats = [f for f in formats if f in POLYGON_FORMATS]
    video = Path(sources[0]) if len(sources) == 1 and is_video(sources[0]) else None
    if video is not None and not video.is_file():
        raise FileNotFoundError(f"{video}: no such image, folder or video")
    if video is not None and predictor.input_format == RAW_FORMAT:
        raise ValueError(f"{video}: videos are 8-bit; predict them with a BGR or RGB model, not INPUT.FORMAT 'RAW'")
    if video is None and any(is_video(s) for s in sources):
        raise ValueError(f"a video is predicted on its own, not with other inputs: {[str(s) for s in sources]}")
    if video is not None and polygon_formats:
        raise ValueError(f"{video}: output formats {polygon_formats} are written for images; a video gets 'coco' only")
    inputs = resolve_images(sources) if video is None else []
    gt = load_coco_json(gt_json) if gt_json is not None else None
    categories = _CategoryIds(metadata, gt.dataset["categories"] if gt is not None else None)
    image_ids = (
        _image_ids([item.name for item in inputs], gt, Path(gt_json)) if gt is not None and video is None else None
    )
    overlays = output_dir / "overlays"
    overlays.mkdir(parents=True, exist_ok=True)
    writers = [build_writer(name, output_dir, categories.names) for name in polygon_formats]
    paths = {item.name: item.path for item in inputs}
    polygon_stats = PolygonStats()
    skipped: list[str] = []
    frames = _read_video(video) if video is not None else _read_images(inputs, skipped, predictor)
    total, fps = _video_info(video) if video is not None else (len(inputs), 0.0)
    title = video.name if video is not None else f"{len(inputs)} images"
    video_writer = None
    images, results, num_instances, image_files = [], [], 0, {}
    with tqdm(total=total, desc=f"predicting {title}", unit="img") as progress:
        for batch in _batches(frames, batch_size):
            for frame, output in zip(batch, predictor.predict_batch([f.image_bgr for f in batch])):
                instances = output["instances"].to("cpu")
                num_instances += len(instances)
                image_id = image_ids[frame.name] if image_ids is not None else len(images)
                height, width = frame.image_bgr.shape[:2]
                images.append({"id": image_id, "file_name": frame.name, "height": height, "width": width})
                if video is None:
                    image_files[image_id] = paths[frame.name]
                if "coco" in formats:
                    for r in instances_to_coco_results(instances, image_id):
                        results.append({**r, "category_id": categories.ids[r["category_id"]]})
                if writers:
                    polygons = _polygons(instances, categories, polygon_tolerance, min_area, polygon_stats, polygon_formats)
                    for writer in writers:
                        writer.write(ImagePolygons(frame.name, paths[frame.name], height, width, polygons))
                raw = predictor.input_format == RAW_FORMAT
                shown = to_display_rgb(frame.image_bgr) if raw else frame.image_bgr[:, :, ::-1]
                vis = Visualizer(shown, categories.metadata)
                overlay_bgr = np.ascontiguousarray(
                    vis.draw_instance_predictions(instances).get_image()[:, :, ::-1]
                )
                if video is not None:
                    video_writer = video_writer or _video_writer(overlays / f"{video.stem}.mp4", fps, width, height)
                    video_writer.write(overlay_bgr)
                else:
                    target = (overlays / frame.name).with_suffix(".png")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(target), overlay_bgr)
            progress.update(len(batch))
    if video_writer is not None:
        video_writer.release()
    if skipped:
        logger.warning("skipped %d of %d images that could not be read: %s", len(skipped), total, skipped[:5])
    outputs = {writer.name: writer.close() for writer in writers}
    predictions_json = images_json = None
    if "coco" in formats:
        predictions_json, images_json = output_dir / "predictions.json", output_dir / "images.json"
        predictions_json.write_text(json.dumps(results))
        coco_categories = [{"id": i, "name": n} for i, n in zip(categories.ids, categories.names)]
        images_json.write_text(json.dumps({"images": images, "annotations": [], "categories": coco_categories}))
        outputs = {"coco": predictions_json, **outputs}
    if polygon_stats.skipped_instances:
        logger.warning(
            "%d instances have no polygon (empty mask, or every part under %g pixels) and are not in %s",
            polygon_stats.skipped_instances, min_area, polygon_formats,
        )  # fmt: skip
    logger.info("%d images, %d instances -> %s", len(images), num_instances, output_dir)
    return PredictSummary(
        len(images), len(skipped), num_instances, predictions_json, images_json, overlays, outputs, polygon_stats,
        image_files,
    )


def _polygons(
    instances: Instances,
    categories: _CategoryIds,
    tolerance: float,
    min_area: float,
    stats: PolygonStats,
    formats: list[str],
) -> list[InstancePolygons]:
    """The predicted masks as polygons, for the polygon ``formats``; tiled inference's RLE masks
    (``TILING.RLE_OUTPUT``) are decoded one at a time."""
    if len(instances) == 0:
        return []
    if instances.has("pred_masks"):
        masks: Iterable[np.ndarray] = instances.pred_masks.numpy()
    elif instances.has(RLE_FIELD):
        masks = (mask_util.decode(rle) for rle in instances.get(RLE_FIELD))
    else:
        raise ValueError(f"output formats {formats} need masks; this model predicts boxes only")
    return polygonize_instances(
        masks, instances.pred_classes.tolist(), instances.scores.tolist(),
        categories.names, categories.ids, tolerance, min_area, stats,
    )  # fmt: skip


def _video_writer(path: Path, fps: float, width: int, height: int) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write mp4 video here")
    return writer
