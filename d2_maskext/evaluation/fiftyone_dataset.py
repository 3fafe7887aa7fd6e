"""A persistent FiftyOne dataset of an evaluation, scored like the report so both give the same mask AP.

Each COCO image becomes a sample whose ``filepath`` is the original image file (any size or bit depth: the image
is never decoded here, its width and height come from the ground truth), with a ``ground_truth`` and a
``predictions`` field of ``fo.Detections`` carrying instance masks, class names and scores. FiftyOne's
``evaluate_detections(use_masks=True)`` then marks every object TP/FP/FN under the ``eval`` key and returns the
COCO-style mask mAP.

FiftyOne stores an instance mask cropped to its detection's box and compares masks only inside that box. A model's
box is not its mask's box, so importing model boxes would cut off mask pixels (on the demo model: 37.1 mask mAP
against the report's 43.3). Every instance therefore gets the tight box of its mask, ground truth included, with
the mask cropped to exactly that box; the pixels FiftyOne compares are then those pycocotools compares.

``fiftyone`` is imported only when a dataset is written: it connects to ``FIFTYONE_DATABASE_URI`` when that is set,
and otherwise starts its own MongoDB.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from tqdm import tqdm

from .coco_metrics import load_coco_json, load_results_json

logger = logging.getLogger(__name__)

GT_FIELD = "ground_truth"
PREDICTIONS_FIELD = "predictions"
EVAL_KEY = "eval"
NOTED = ("empty ground-truth masks", "empty predicted masks", "crowd regions", "image files not found")


@dataclass(frozen=True)
class TightInstance:
    """An instance mask cropped to its tight box; ``box`` is ``[x, y, w, h]`` relative to the image."""

    box: list[float]
    mask: np.ndarray


@dataclass(frozen=True)
class FiftyOneEvaluation:
    """What :func:`write_fiftyone_dataset` wrote and measured; ``mask_map`` in percent, like the report.

    ``left_out`` counts the predictions not written (beyond COCOeval's per-image limit); ``noted`` counts what
    was written but deserves a look: empty masks, crowd regions, image files that do not exist.
    """

    dataset_name: str
    mask_map: float
    num_images: int
    num_ground_truth: int
    num_predictions: int
    left_out: int
    noted: dict[str, int]

    def summary(self) -> str:
        noted = ", ".join(f"{n} {what}" for what, n in sorted(self.noted.items()) if n) or "nothing"
        return (
            f"FiftyOne dataset {self.dataset_name!r}: {self.num_images} images, {self.num_ground_truth} ground-truth "
            f"and {self.num_predictions} predicted instances ({self.left_out} predictions beyond the per-image "
            f"limit left out; noted: {noted}); mask mAP {self.mask_map:.2f} (eval key {EVAL_KEY!r}).\n"
            f"Open it (with the same FIFTYONE_DATABASE_URI, if one is set) with `fiftyone app launch "
            f"{self.dataset_name}` or in Python: "
            f"`import fiftyone as fo; fo.launch_app(fo.load_dataset({self.dataset_name!r}))`"
        )


def tight_instance(mask: np.ndarray) -> TightInstance:
    """``mask`` (H x W) cropped to the smallest box holding all its pixels; an empty mask gets a zero-size box,
    which FiftyOne never matches (as pycocotools never matches an empty mask)."""
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return TightInstance([0.0, 0.0, 0.0, 0.0], np.zeros((1, 1), dtype=bool))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = [x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height]
    return TightInstance([float(v) for v in box], mask[y0:y1, x0:x1].astype(bool))


def instance_mask(coco_gt: COCO, entry: dict, what: str) -> np.ndarray:
    """The full-image mask of a COCO annotation or result (polygons, RLE or uncompressed RLE), checked against
    its image's size; ``what`` names the entry in errors."""
    if "segmentation" not in entry:
        raise ValueError(
            f"{what} has no segmentation: FiftyOne's mask evaluation needs a mask for every instance"
        )
    image = coco_gt.imgs[entry["image_id"]]
    try:
        mask = coco_gt.annToMask(entry)
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"{what}: unreadable segmentation ({type(e).__name__}: {e})") from e
    if mask.shape != (image["height"], image["width"]):
        raise ValueError(
            f"{what}: mask is {mask.shape[1]}x{mask.shape[0]} but image {entry['image_id']} is "
            f"{image['width']}x{image['height']}"
        )
    return mask


def top_results(
    results: Sequence[dict], coco_gt: COCO, max_dets_per_image: int, results_name: str
) -> tuple[dict[int, list[tuple[int, dict]]], int]:
    """Results grouped by image, each (image, class) pair cut to its ``max_dets_per_image`` best scores as COCOeval
    does; entries keep their index in ``results``. Also returns how many were cut."""
    by_pair: dict[tuple[int, int], list[tuple[int, dict]]] = defaultdict(list)
    for index, result in enumerate(results):
        if not isinstance(result, dict) or not isinstance(result.get("score"), (int, float)):
            raise ValueError(f"{results_name}: result {index} is not a COCO result with a numeric score")
        for key, known in (("image_id", coco_gt.imgs), ("category_id", coco_gt.cats)):
            if result.get(key) not in known:
                raise ValueError(
                    f"{results_name}: result {index} has {key} {result.get(key)!r}, unknown to the ground truth"
                )
        by_pair[(result["image_id"], result["category_id"])].append((index, result))
    by_image: dict[int, list[tuple[int, dict]]] = defaultdict(list)
    cut = 0
    for (image_id, _), entries in by_pair.items():
        entries.sort(key=lambda e: -e[1]["score"])  # stable, like COCOeval's mergesort
        by_image[image_id].extend(entries[:max_dets_per_image])
        cut += max(0, len(entries) - max_dets_per_image)
    return by_image, cut


def class_names(coco_gt: COCO) -> dict[int, str]:
    """Category id to name; two categories with one name would merge in FiftyOne, so they are refused."""
    names = {cat_id: str(cat["name"]) for cat_id, cat in coco_gt.cats.items()}
    repeated = sorted(name for name, n in Counter(names.values()).items() if n > 1)
    if repeated:
        raise ValueError(f"ground truth: category names {repeated} name more than one category id")
    return names


def image_files(
    coco_gt: COCO, image_paths: Mapping[int, str | Path] | None, image_root: str | Path | None
) -> dict[int, Path]:
    """Each image's original file: ``image_paths[id]`` when given, else ``image_root / file_name``."""
    root = Path(image_root) if image_root is not None else Path.cwd()
    paths = dict(image_paths or {})
    return {
        img_id: Path(paths[img_id]) if img_id in paths else root / img["file_name"]
        for img_id, img in coco_gt.imgs.items()
    }


def _detections(fo: Any, instances: Iterable[tuple[TightInstance, dict[str, Any]]]) -> Any:
    return fo.Detections(
        detections=[
            fo.Detection(bounding_box=inst.box, mask=inst.mask, **fields) for inst, fields in instances
        ]
    )


def _samples(
    fo: Any,
    coco_gt: COCO,
    by_image: dict[int, list[tuple[int, dict]]],
    files: dict[int, Path],
    names: dict[int, str],
    results_name: str,
    counts: Counter,
) -> Iterator[Any]:
    """One FiftyOne sample per ground-truth image; masks are decoded one image at a time."""
    for img_id, img in tqdm(coco_gt.imgs.items(), desc="FiftyOne samples", unit="img"):
        gt = []
        for ann in coco_gt.imgToAnns.get(img_id, []):
            inst = tight_instance(instance_mask(coco_gt, ann, f"ground truth: annotation {ann.get('id')}"))
            crowd = bool(ann.get("iscrowd", 0))
            counts["empty ground-truth masks"] += inst.box[2] == 0
            counts["crowd regions"] += crowd
            gt.append(
                (inst, {"label": names[ann["category_id"]], "iscrowd": crowd, "coco_id": ann.get("id")})
            )
        predictions = []
        for index, result in by_image.get(img_id, []):
            inst = tight_instance(instance_mask(coco_gt, result, f"{results_name}: result {index}"))
            counts["empty predicted masks"] += inst.box[2] == 0
            predictions.append(
                (inst, {"label": names[result["category_id"]], "confidence": float(result["score"])})
            )
        if not files[img_id].is_file():
            counts["image files not found"] += 1
        yield fo.Sample(
            filepath=str(files[img_id].resolve()),
            metadata=fo.ImageMetadata(width=img["width"], height=img["height"]),
            coco_id=img_id,
            **{GT_FIELD: _detections(fo, gt), PREDICTIONS_FIELD: _detections(fo, predictions)},
        )


def write_fiftyone_dataset(
    name: str,
    coco_gt: COCO | str | Path,
    results: Sequence[dict] | str | Path,
    image_paths: Mapping[int, str | Path] | None = None,
    image_root: str | Path | None = None,
    max_dets_per_image: int = 100,
) -> FiftyOneEvaluation:
    """(Re)write persistent FiftyOne dataset ``name`` from COCO ground truth and COCO results, run FiftyOne's mask
    evaluation (``eval`` key) and return its mAP.

    ``coco_gt`` and ``results`` are objects or JSON paths (the report's ``ground_truth.json`` and
    ``predictions.json`` work). Images are ``image_paths[image_id]`` when given, else ``file_name`` under
    ``image_root`` (default: the ground-truth file's folder, or the working directory for a ``COCO`` object).
    Predictions beyond ``max_dets_per_image`` per image and class are left out, as COCOeval leaves them out; image
    files that do not exist are kept (the App shows no pixels) and counted.
    """
    if isinstance(coco_gt, (str, Path)):
        image_root = image_root if image_root is not None else Path(coco_gt).parent
        coco_gt = load_coco_json(coco_gt)
    results_name = "predictions"
    if isinstance(results, (str, Path)):
        results_name = str(results)
        results = load_results_json(results, coco_gt)
    names = class_names(coco_gt)
    by_image, left_out = top_results(results, coco_gt, max_dets_per_image, results_name)
    files = image_files(coco_gt, image_paths, image_root)
    counts: Counter = Counter(dict.fromkeys(NOTED, 0))

    import fiftyone as fo

    dataset = fo.Dataset(name, persistent=True, overwrite=True)
    dataset.default_classes = list(names.values())
    samples = _samples(fo, coco_gt, by_image, files, names, results_name, counts)
    dataset.add_samples(samples, dynamic=True, progress=False)
    evaluation = dataset.evaluate_detections(
        PREDICTIONS_FIELD,
        gt_field=GT_FIELD,
        eval_key=EVAL_KEY,
        classes=list(names.values()),
        use_masks=True,
        compute_mAP=True,
    )
    if counts["crowd regions"]:
        logger.warning(
            "%s: %d crowd regions; FiftyOne scores a prediction on a crowd region by plain mask IoU where "
            "pycocotools divides by the prediction's area only, so its mAP can differ from the report's",
            name,
            counts["crowd regions"],
        )
    if counts["image files not found"]:
        logger.warning("%s: %d image files not found", name, counts["image files not found"])
    mask_map = float(evaluation.mAP())
    return FiftyOneEvaluation(
        dataset_name=name,
        mask_map=mask_map * 100 if mask_map >= 0 else float("nan"),
        num_images=len(coco_gt.imgs),
        num_ground_truth=sum(len(coco_gt.imgToAnns.get(i, [])) for i in coco_gt.imgs),
        num_predictions=sum(len(v) for v in by_image.values()),
        left_out=left_out,
        noted=dict(counts),
    )
