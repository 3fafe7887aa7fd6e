#!/usr/bin/env python
"""How much of a predicted mask survives as polygons: the demo model's masks on the synthetic val split,
written as LabelMe, CVAT for images 1.1 and GeoJSON at a few ``--polygon-tolerance`` values and read back
(LabelMe and CVAT through the package's own readers, GeoJSON rasterized from its rings).

Prints per format and tolerance: instances read back, their mean and minimum mask IoU with the predicted
mask (the best-matching prediction of the image), and the mean number of polygon vertices per instance;
then, for comparison, OpenCV's contour points taken as the polygon as they come (border-pixel centres, no
half-pixel shift), rasterized the same way.

    python benchmarks/bench_prediction_roundtrip.py \\
        --config-file configs/synthetic/mask_rcnn_R18_FPN_GN_demo.yaml --weights output/demo/model_final.pth
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog
from tqdm import tqdm

from d2_maskext.cli.config_loading import load_config
from d2_maskext.data.formats import DatasetSource, ProblemLog, Severity, load_dataset
from d2_maskext.data.writers import ImagePolygons, PolygonStats, build_writer, polygonize_instances
from d2_maskext.predict import BatchPredictor
from d2_maskext.utils.image_io import read_image
from d2_maskext.utils.polygons import rings_to_mask

REPO = Path(__file__).resolve().parents[1]
FORMATS = ("labelme", "cvat", "geojson")


def predict_masks(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Per val image: its record and predicted masks, classes and scores."""
    config = load_config(args.config_file, ["MODEL.WEIGHTS", args.weights, "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
                                            str(args.score_threshold), "MODEL.DEVICE", "cpu"])  # fmt: skip
    predictor = BatchPredictor(config.build_inference_model(), config.test_resize(), config.input_format)
    records = DatasetCatalog.get(args.dataset)[: args.num_images]
    predicted = []
    for record in tqdm(records, desc="predicting", unit="img"):
        instances = predictor(read_image(record["file_name"], "BGR"))["instances"].to("cpu")
        predicted.append({
            "record": record,
            "masks": instances.pred_masks.numpy(),
            "classes": instances.pred_classes.tolist(),
            "scores": instances.scores.tolist(),
        })  # fmt: skip
    return predicted, config.class_names()


def _read_back(fmt: str, folder: Path, image_root: Path, sizes: dict[str, tuple[int, int]]) -> dict[str, list[np.ndarray]]:
    """Image file name -> the masks read back from what ``fmt`` wrote into ``folder``."""
    if fmt == "geojson":
        masks = {}
        for path in folder.glob("*.geojson"):
            collection = json.loads(path.read_text())
            height, width = sizes[collection["image"]]
            read = []
            for feature in collection["features"]:
                geometry = feature["geometry"]
                polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
                read.append(rings_to_mask([p[0] for p in polygons], [h for p in polygons for h in p[1:]], height, width))
            masks[collection["image"]] = read
        return masks
    annotations = folder if fmt == "labelme" else folder / "annotations.xml"
    problems = ProblemLog(f"roundtrip_{fmt}")
    loaded = load_dataset(DatasetSource(f"roundtrip_{fmt}", fmt, image_root, annotations, allow_outside_root=True), problems)
    if problems.count(Severity.FATAL):
        raise RuntimeError(problems.report())
    masks = {}
    for record in loaded.records:
        read = []
        for annotation in record["annotations"]:
            segmentation = annotation["segmentation"]
            if isinstance(segmentation, dict):
                read.append(mask_util.decode(segmentation).astype(bool))
            else:
                read.append(rings_to_mask(segmentation, [], record["height"], record["width"]))
        masks[Path(record["file_name"]).name] = read
    return masks


def measure(predicted: list[dict], class_names: list[str], tolerance: float, folder: Path) -> dict[str, dict]:
    writers = [build_writer(fmt, folder, class_names) for fmt in FORMATS]
    stats, vertices = PolygonStats(), []
    for item in predicted:
        record = item["record"]
        instances = polygonize_instances(
            item["masks"], item["classes"], item["scores"], class_names, list(range(len(class_names))),
            tolerance, 0.0, stats,
        )  # fmt: skip
        vertices.extend(sum(len(p.exterior) + sum(len(h) for h in p.holes) for p in i.parts) for i in instances)
        image = ImagePolygons(Path(record["file_name"]).name, Path(record["file_name"]), record["height"],
                              record["width"], instances)  # fmt: skip
        for writer in writers:
            writer.write(image)
    for writer in writers:
        writer.close()
    image_root = Path(predicted[0]["record"]["file_name"]).parent
    by_name = {Path(item["record"]["file_name"]).name: item["masks"] for item in predicted}
    sizes = {name: masks.shape[1:] for name, masks in by_name.items()}
    rows = {}
    for fmt in FORMATS:
        ious = []
        for name, read in _read_back(fmt, folder / fmt, image_root, sizes).items():
            for mask in read:
                ious.append(max(float((mask & m).sum() / max((mask | m).sum(), 1)) for m in by_name[name]))
        rows[fmt] = {"instances": len(ious), "mean": np.mean(ious), "min": np.min(ious),
                     "vertices": np.mean(vertices), "skipped": stats.skipped_instances}  # fmt: skip
    return rows


def centre_contour_iou(predicted: list[dict], tolerance: float) -> list[float]:
    """IoU of each mask with its OpenCV contours (RETR_CCOMP, Douglas-Peucker) used directly as polygons."""
    ious = []
    for item in predicted:
        for mask in item["masks"]:
            contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
            rings = [cv2.approxPolyDP(c, tolerance, True).reshape(-1, 2) if tolerance else c.reshape(-1, 2) for c in contours]
            parents = hierarchy[0][:, 3] if contours else []
            outer = [r for r, parent in zip(rings, parents) if parent < 0]
            holes = [r for r, parent in zip(rings, parents) if parent >= 0]
            read = rings_to_mask(outer, holes, *mask.shape)
            ious.append(float((read & mask).sum() / max((read | mask).sum(), 1)))
    return ious


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=str(REPO / "configs/synthetic/mask_rcnn_R18_FPN_GN_demo.yaml"))
    parser.add_argument("--weights", default=str(REPO / "output/demo/model_final.pth"))
    parser.add_argument("--dataset", default="maskext_synth_val")
    parser.add_argument("--num-images", type=int, default=150)
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5, 2.0])
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit}, {args.dataset} ({args.num_images} images)")
    predicted, class_names = predict_masks(args)
    print(f"{sum(len(p['masks']) for p in predicted)} predicted instances (score >= {args.score_threshold})")
    print("| tolerance (px) | format | instances | mean IoU | min IoU | vertices/instance |")
    print("|---:|---|---:|---:|---:|---:|")
    for tolerance in args.tolerances:
        with tempfile.TemporaryDirectory() as folder:
            for fmt, row in measure(predicted, class_names, tolerance, Path(folder)).items():
                print(f"| {tolerance:g} | {fmt} | {row['instances']} | {row['mean']:.4f} | {row['min']:.4f} | "
                      f"{row['vertices']:.1f} |")  # fmt: skip
    for tolerance in args.tolerances[:2]:
        ious = centre_contour_iou(predicted, tolerance)
        print(f"| {tolerance:g} | contour points as they come (no half-pixel shift) | {len(ious)} | {np.mean(ious):.4f} | "
              f"{np.min(ious):.4f} | |")  # fmt: skip


if __name__ == "__main__":
    main()
