"""Predictions as LabelMe JSON: one ``<image stem>.json`` per image, next to nothing but each other.

``imagePath`` is the original image relative to the JSON (no copy, ``imageData`` null), so
``labelme <image folder> --output <this folder>`` opens the predictions for correction. Each polygon is a
shape labelled with its class, the score in ``description`` (``score=0.9312``). An instance of several
parts, or with holes, is several shapes sharing a ``group_id`` (LabelMe's convention); LabelMe has no
holes, so a hole is a polygon of that group with the shape flag ``hole`` true, which the package's LabelMe
reader cuts out of the instance.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...utils.polygons import HOLE_FLAG
from .base import ImagePolygons, flat_polygons, output_path, relative_image_path, rounded_points

LABELME_VERSION = "5.5.0"


class LabelMeWriter:
    name = "labelme"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, image: ImagePolygons) -> None:
        path = output_path(self.folder, image.name, ".json")
        shapes = [
            {
                "label": flat.instance.class_name,
                "points": rounded_points(flat.points),
                "group_id": flat.group_id,
                "description": f"score={flat.instance.score}",
                "shape_type": "polygon",
                "flags": {HOLE_FLAG: True} if flat.hole else {},
            }
            for flat in flat_polygons(image.instances)
        ]
        document = {
            "version": LABELME_VERSION,
            "flags": {},
            "shapes": shapes,
            "imagePath": relative_image_path(image.path, path.parent),
            "imageData": None,
            "imageHeight": image.height,
            "imageWidth": image.width,
        }
        path.write_text(json.dumps(document, indent=1))

    def close(self) -> Path:
        return self.folder
