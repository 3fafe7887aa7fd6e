"""Run a trained model on an image, a folder of images or a video; write overlays and COCO results.

Outputs in ``output_dir``: ``overlays/`` (one PNG per image, or ``<video>.mp4``), ``predictions.json``
(COCO results with RLE masks, dataset category ids) and ``images.json`` (a COCO file with the images and
categories the results refer to, so ``COCO("images.json").loadRes("predictions.json")`` works).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.utils.visualizer import Visualizer
from pycocotools.coco import COCO
from tqdm import tqdm

from .checkpoint import SafeCheckpointer
from .data.formats.image_files import IMAGE_EXTENSIONS, ImageReadError, list_images, read_image
from .evaluation.coco_metrics import load_coco_json

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})


class BatchPredictor(DefaultPredictor):
    """Detectron2's ``DefaultPredictor`` (same test-time resize) that also runs a batch, and loads its
    weights through ``SafeCheckpointer`` so an untrusted file cannot run code."""

    def __init__(self, cfg: CfgNode):
        without_weights = cfg.clone()
        without_weights.defrost()
        without_weights.MODEL.WEIGHTS = ""
        super().__init__(without_weights)
        self.cfg = cfg.clone()
        SafeCheckpointer.from_config(cfg, self.model).load(cfg.MODEL.WEIGHTS)

    def predict_batch(self, images_bgr: Sequence[np.ndarray]) -> list[dict]:
        """Model outputs for BGR uint8 images, in one forward pass."""
        with torch.inference_mode():
            return self.model([self._model_input(image) for image in images_bgr])

    def _model_input(self, image_bgr: np.ndarray) -> dict:
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image)
        return {
            "image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
            "height": height,
            "width": width,
        }


@dataclass(frozen=True)
class Frame:
    """One image to predict: its name in the outputs and its pixels (BGR)."""

    name: str
    image_bgr: np.ndarray


@dataclass(frozen=True)
class PredictSummary:
    num_images: int
    num_skipped: int
    num_instances: int
    predictions_json: Path
    images_json: Path
    overlays: Path


def _read_images(paths: Sequence[Path], root: Path, skipped: list[str]) -> Iterator[Frame]:
    for index, path in enumerate(paths):
        try:
            image = read_image(path, "BGR")
        except ImageReadError as e:
            logger.warning("skipping image %d %s: cannot read it (%s)", index, path, e)
            skipped.append(str(path))
            continue
        yield Frame(_frame_name(path, root), image)


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

    def __init__(self, cfg: CfgNode, gt_categories: list[dict] | None):
        num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else Metadata()
        if gt_categories is not None:
            cats = sorted(gt_categories, key=lambda c: c["id"])
            if len(cats) != num_classes:
                raise ValueError(
                    f"ground truth has {len(cats)} categories, the model predicts {num_classes} classes"
                )
            self.ids, self.names = [c["id"] for c in cats], [c["name"] for c in cats]
        else:
            mapping = metadata.get("thing_dataset_id_to_contiguous_id")
            reverse = {v: k for k, v in mapping.items()} if mapping else {}
            self.ids = [reverse.get(i, i) for i in range(num_classes)]
            self.names = list(metadata.get("thing_classes", [str(i) for i in self.ids]))
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


def _resolve_source(source: Path) -> tuple[list[Path], Path, bool]:
    """(image paths, folder their names are relative to, is a video)."""
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such image, folder or video")
    suffix = source.suffix.lower()
    if source.is_file() and suffix in VIDEO_EXTENSIONS:
        return [], source.parent, True
    if source.is_file() and suffix in IMAGE_EXTENSIONS:
        return [source], source, False
    if not source.is_dir():
        raise ValueError(
            f"{source}: unknown file type (images: {sorted(IMAGE_EXTENSIONS)}, videos: {sorted(VIDEO_EXTENSIONS)})"
        )
    paths = [source / relative for relative in list_images(source)]
    if not paths:
        raise ValueError(f"{source}: no images with extensions {sorted(IMAGE_EXTENSIONS)}")
    overlay_names = [Path(_frame_name(p, source)).with_suffix(".png") for p in paths]
    if len(set(overlay_names)) < len(overlay_names):
        clash = next(n for n in overlay_names if overlay_names.count(n) > 1)
        raise ValueError(
            f"{source}: several images share the name stem {clash.with_suffix('')} (overlays would clash)"
        )
    return paths, source, False


def _video_info(path: Path) -> tuple[int, float]:
    """(frame count, frames per second; 25 when the container does not say)."""
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), capture.get(cv2.CAP_PROP_FPS) or 25.0
    finally:
        capture.release()


def predict(
    cfg: CfgNode,
    source: str | Path,
    output_dir: str | Path,
    batch_size: int = 4,
    gt_json: str | Path | None = None,
) -> PredictSummary:
    """Predict every image of ``source`` (image file, folder or video) with the model of ``cfg``.

    With ``gt_json`` (a COCO file), image and category ids follow it, so the results can be evaluated
    with ``tools/eval_report.py --predictions ... --gt ...``.
    """
    source, output_dir = Path(source), Path(output_dir)
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    paths, root, is_video = _resolve_source(source)
    gt = load_coco_json(gt_json) if gt_json is not None else None
    categories = _CategoryIds(cfg, gt.dataset["categories"] if gt is not None else None)
    image_ids = (
        _image_ids([_frame_name(p, root) for p in paths], gt, Path(gt_json))
        if gt is not None and not is_video
        else None
    )
    overlays = output_dir / "overlays"
    overlays.mkdir(parents=True, exist_ok=True)
    predictor = BatchPredictor(cfg)
    skipped: list[str] = []
    frames = _read_video(source) if is_video else _read_images(paths, root, skipped)
    total, fps = _video_info(source) if is_video else (len(paths), 0.0)
    video_writer = None
    images, results = [], []
    with tqdm(total=total, desc=f"predicting {source.name}", unit="img") as progress:
        for batch in _batches(frames, batch_size):
            for frame, output in zip(batch, predictor.predict_batch([f.image_bgr for f in batch])):
                instances = output["instances"].to("cpu")
                image_id = image_ids[frame.name] if image_ids is not None else len(images)
                height, width = frame.image_bgr.shape[:2]
                images.append({"id": image_id, "file_name": frame.name, "height": height, "width": width})
                for r in instances_to_coco_json(instances, image_id):
                    results.append({**r, "category_id": categories.ids[r["category_id"]]})
                vis = Visualizer(frame.image_bgr[:, :, ::-1], categories.metadata)
                overlay_bgr = np.ascontiguousarray(
                    vis.draw_instance_predictions(instances).get_image()[:, :, ::-1]
                )
                if is_video:
                    video_writer = video_writer or _video_writer(
                        overlays / f"{source.stem}.mp4", fps, width, height
                    )
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
    predictions_json, images_json = output_dir / "predictions.json", output_dir / "images.json"
    predictions_json.write_text(json.dumps(results))
    coco_categories = [{"id": i, "name": n} for i, n in zip(categories.ids, categories.names)]
    images_json.write_text(json.dumps({"images": images, "annotations": [], "categories": coco_categories}))
    logger.info("%d images, %d instances -> %s", len(images), len(results), output_dir)
    return PredictSummary(len(images), len(skipped), len(results), predictions_json, images_json, overlays)


def _frame_name(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path != root else path.name


def _video_writer(path: Path, fps: float, width: int, height: int) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot write mp4 video here")
    return writer
