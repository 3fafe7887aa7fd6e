"""Predictions as one "CVAT for images 1.1" XML (``annotations.xml``), to upload into a CVAT task made
from the same images (Actions > Upload annotations > CVAT 1.1).

Every label declares two attributes: ``score`` (the model's score) and ``hole``. Each polygon is a
``<polygon>`` of its image, ``source="auto"``; an instance of several parts or with holes is several
polygons sharing a ``group_id``, and a hole (CVAT has none) is a polygon of that group with ``hole`` true,
which the package's ``cvat`` reader cuts out of the instance. Images are streamed to a side file while
predicting, so memory does not grow with the number of images.
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from ...utils.polygons import HOLE_FLAG
from .base import ImagePolygons, flat_polygons

CVAT_VERSION = "1.1"
SCORE_ATTRIBUTE = "score"


def points_text(points) -> str:
    """CVAT's ``points``: ``x,y;x,y;...``."""
    return ";".join(f"{x:.3f},{y:.3f}" for x, y in points)


def _attribute_spec(name: str, input_type: str, default: str, values: str) -> ET.Element:
    attribute = ET.Element("attribute")
    for key, text in (("name", name), ("mutable", "False"), ("input_type", input_type), ("default_value", default), ("values", values)):
        ET.SubElement(attribute, key).text = text
    return attribute


def _meta(class_names: Sequence[str], size: int) -> ET.Element:
    meta = ET.Element("meta")
    task = ET.SubElement(meta, "task")
    ET.SubElement(task, "name").text = "predictions"
    ET.SubElement(task, "size").text = str(size)
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for name in class_names:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "type").text = "polygon"
        attributes = ET.SubElement(label, "attributes")
        attributes.append(_attribute_spec(SCORE_ATTRIBUTE, "number", "0", "0;1;0.0001"))
        attributes.append(_attribute_spec(HOLE_FLAG, "checkbox", "false", "false"))
    ET.SubElement(meta, "dumped").text = datetime.now(timezone.utc).isoformat(sep=" ", timespec="seconds")
    return meta


class CvatWriter:
    name = "cvat"

    def __init__(self, folder: Path, class_names: Sequence[str]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "annotations.xml"
        self.class_names = list(class_names)
        self._body_path = folder / ".annotations.images.part"
        self._body_path.write_text("", encoding="utf-8")
        self._count = 0

    def write(self, image: ImagePolygons) -> None:
        element = ET.Element(
            "image", id=str(self._count), name=image.name, width=str(image.width), height=str(image.height)
        )
        for flat in flat_polygons(image.instances):
            polygon = ET.SubElement(
                element, "polygon", label=flat.instance.class_name, source="auto", occluded="0",
                points=points_text(flat.points), z_order="0",
            )  # fmt: skip
            if flat.group_id is not None:
                polygon.set("group_id", str(flat.group_id))
            ET.SubElement(polygon, "attribute", name=SCORE_ATTRIBUTE).text = str(flat.instance.score)
            ET.SubElement(polygon, "attribute", name=HOLE_FLAG).text = "true" if flat.hole else "false"
        ET.indent(element, level=1)
        with open(self._body_path, "a", encoding="utf-8") as body:
            body.write("  " + ET.tostring(element, encoding="unicode") + "\n")
        self._count += 1

    def close(self) -> Path:
        meta = _meta(self.class_names, self._count)
        ET.indent(meta, level=1)
        with open(self.path, "w", encoding="utf-8") as out, open(self._body_path, encoding="utf-8") as body:
            out.write('<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n')
            out.write(f"  <version>{CVAT_VERSION}</version>\n  {ET.tostring(meta, encoding='unicode')}\n")
            shutil.copyfileobj(body, out)
            out.write("</annotations>\n")
        self._body_path.unlink()
        return self.path
