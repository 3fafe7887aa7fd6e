"""Prediction writers: a model's masks as polygons in the files annotation tools open (LabelMe JSON,
CVAT for images 1.1 XML, GeoJSON), for model-assisted labelling: predict, correct, retrain.

Each writer takes one ``ImagePolygons`` per image (``write``) and finishes with ``close``, which returns
the folder or file written; ``build_writer`` makes one by format name.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...utils.polygons import HOLE_FLAG
from .base import (
    DEFAULT_POLYGON_TOLERANCE,
    ImagePolygons,
    InstancePolygons,
    PolygonStats,
    polygonize_instances,
)
from .cvat import CvatWriter
from .geojson import GeoJsonWriter, read_geotransform
from .labelme import LabelMeWriter

PolygonWriter = LabelMeWriter | CvatWriter | GeoJsonWriter
POLYGON_FORMATS = ("labelme", "cvat", "geojson")


def build_writer(name: str, output_dir: Path, class_names: Sequence[str]) -> PolygonWriter:
    """The writer of format ``name``, writing into ``output_dir / name``."""
    folder = Path(output_dir) / name
    if name == "labelme":
        return LabelMeWriter(folder)
    if name == "cvat":
        return CvatWriter(folder, class_names)
    if name == "geojson":
        return GeoJsonWriter(folder)
    raise ValueError(f"unknown polygon output format {name!r}; valid: {list(POLYGON_FORMATS)}")


__all__ = [
    "DEFAULT_POLYGON_TOLERANCE",
    "HOLE_FLAG",
    "POLYGON_FORMATS",
    "CvatWriter",
    "GeoJsonWriter",
    "ImagePolygons",
    "InstancePolygons",
    "LabelMeWriter",
    "PolygonStats",
    "PolygonWriter",
    "build_writer",
    "polygonize_instances",
    "read_geotransform",
]
