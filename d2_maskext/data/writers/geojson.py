"""Predictions as GeoJSON: one FeatureCollection per image (``<image stem>.geojson``) for QGIS and GIS tools.

Each instance is a Feature: a Polygon (one part) or MultiPolygon, holes included, with properties
``class``, ``score`` and ``category_id``. Rings follow RFC 7946 (closed; exteriors counterclockwise, holes
clockwise, in the written coordinates).

Coordinates are pixels (x = column, y = row, pixel corners; ``"coordinate_space": "pixel"``) unless the
image is a GeoTIFF with an affine geotransform (ModelPixelScale + ModelTiepoint, or ModelTransformation):
then they are map coordinates (``"coordinate_space": "map"``), with the half-pixel shift of a
PixelIsPoint raster (GTRasterTypeGeoKey 2) applied. The CRS carried is the EPSG code of
ProjectedCSTypeGeoKey (else GeographicTypeGeoKey), as the ``crs`` member QGIS and GDAL read
(``urn:ogc:def:crs:EPSG::<code>``); a user-defined CRS (32767) or a raster georeferenced by ground control
points only is written in pixels, with a warning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from ...utils.polygons import PolygonPart
from .base import ImagePolygons, output_path

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
USER_DEFINED = 32767
PIXEL_IS_POINT = 2


@dataclass(frozen=True)
class GeoTransform:
    """Pixel-corner (x, y) -> map (X, Y): ``X = a x + b y + c``, ``Y = d x + e y + f``, and the EPSG code."""

    matrix: np.ndarray  # 2 x 3
    epsg: int | None

    def apply(self, points: np.ndarray) -> np.ndarray:
        return points @ self.matrix[:, :2].T + self.matrix[:, 2]


def read_geotransform(path: Path) -> GeoTransform | None:
    """The GeoTIFF georeferencing of ``path``; None for other files and TIFFs without an affine one."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    with tifffile.TiffFile(path) as tiff:
        geo = tiff.geotiff_metadata
    if not geo:
        return None
    if "ModelTransformation" in geo:
        m = np.asarray(geo["ModelTransformation"], np.float64).reshape(4, 4)
        matrix = np.array([[m[0, 0], m[0, 1], m[0, 3]], [m[1, 0], m[1, 1], m[1, 3]]])
    elif "ModelPixelScale" in geo and "ModelTiepoint" in geo and len(geo["ModelTiepoint"]) == 6:
        sx, sy = geo["ModelPixelScale"][:2]
        i, j, _, x, y, _ = geo["ModelTiepoint"]
        matrix = np.array([[sx, 0.0, x - i * sx], [0.0, -sy, y + j * sy]])
    else:
        logger.warning("%s: GeoTIFF without an affine geotransform (ground control points?); pixel coordinates", path)
        return None
    if int(geo.get("GTRasterTypeGeoKey", 1)) == PIXEL_IS_POINT:  # raster (0, 0) is the first pixel's centre
        matrix[:, 2] -= 0.5 * (matrix[:, 0] + matrix[:, 1])
    code = geo.get("ProjectedCSTypeGeoKey", geo.get("GeographicTypeGeoKey"))
    epsg = int(code) if code is not None and int(code) != USER_DEFINED else None
    if epsg is None:
        logger.warning("%s: GeoTIFF CRS is user-defined or missing; map coordinates written without a crs", path)
    return GeoTransform(matrix, epsg)


def _ring(points: np.ndarray, counterclockwise: bool) -> list[list[float]]:
    x, y = points[:, 0], points[:, 1]
    positive = float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) > 0
    ordered = points if positive == counterclockwise else points[::-1]
    return np.vstack([ordered, ordered[:1]]).tolist()


def _polygon(part: PolygonPart, transform: GeoTransform | None) -> list[list[list[float]]]:
    move = transform.apply if transform is not None else (lambda p: p)
    return [_ring(move(part.exterior), True)] + [_ring(move(hole), False) for hole in part.holes]


class GeoJsonWriter:
    name = "geojson"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, image: ImagePolygons) -> None:
        transform = read_geotransform(image.path)
        features = []
        for instance in image.instances:
            polygons = [_polygon(part, transform) for part in instance.parts]
            geometry = (
                {"type": "Polygon", "coordinates": polygons[0]}
                if len(polygons) == 1
                else {"type": "MultiPolygon", "coordinates": polygons}
            )
            properties = {"class": instance.class_name, "score": instance.score, "category_id": instance.category_id}
            features.append({"type": "Feature", "geometry": geometry, "properties": properties})
        collection = {
            "type": "FeatureCollection",
            "name": Path(image.name).stem,
            "coordinate_space": "pixel" if transform is None else "map",
            "image": image.name,
            "features": features,
        }
        if transform is not None and transform.epsg is not None:
            collection["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{transform.epsg}"}}
        output_path(self.folder, image.name, ".geojson").write_text(json.dumps(collection))

    def close(self) -> Path:
        return self.folder
