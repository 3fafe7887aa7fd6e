"""Tiny datasets written in every supported format, together with their exact source masks.

Polygon formats get rectilinear shapes whose corners lie on pixel corners, so rasterizing the polygon gives
back the source mask pixel for pixel; mask formats also get shapes with holes.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import tifffile
from detectron2.structures import BoxMode, polygons_to_bitmask


@dataclass
class Instance:
    label: str
    mask: np.ndarray  # bool (H, W)
    polygon: list[float] | None = None  # exact outline, when the shape has one


@dataclass
class Scene:
    stem: str
    image: np.ndarray  # BGR uint8
    instances: list[Instance] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[:2]


def unique_name(prefix: str) -> str:
    """Dataset names are global in Detectron2's catalogs; every test registers fresh ones."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def rectilinear(label: str, height: int, width: int, corners: list[tuple[int, int]]) -> Instance:
    """Instance from a polygon with axis-parallel edges and integer corners (exactly rasterizable)."""
    polygon = [float(v) for xy in corners for v in xy]
    mask = polygons_to_bitmask([np.array(polygon)], height, width)
    return Instance(label, mask, polygon)


def ring(label: str, height: int, width: int, center: tuple[int, int], outer: int, inner: int) -> Instance:
    """A mask with a hole: no single polygon describes it, so only mask formats carry it."""
    yy, xx = np.mgrid[:height, :width]
    distance = np.hypot(xx + 0.5 - center[0], yy + 0.5 - center[1])
    return Instance(label, (distance <= outer) & (distance > inner))


def polygon_scenes(seed: int = 0) -> list[Scene]:
    """Two images with rectangles and L-shapes of two classes."""
    rng = np.random.default_rng(seed)
    h, w = 40, 56
    a = Scene("img_a", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    a.instances = [
        rectilinear("cat", h, w, [(2, 3), (20, 3), (20, 15), (2, 15)]),
        rectilinear("dog", h, w, [(25, 5), (50, 5), (50, 12), (33, 12), (33, 35), (25, 35)]),
    ]
    b = Scene("img_b", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    b.instances = [rectilinear("dog", h, w, [(10, 10), (45, 10), (45, 30), (10, 30)])]
    return [a, b]


def mask_scenes(seed: int = 0) -> list[Scene]:
    """Polygon scenes plus a ring (a mask with a hole) and an image without instances."""
    scenes = polygon_scenes(seed)
    h, w = scenes[0].size
    scenes[0].instances.append(ring("cat", h, w, (11, 28), 8, 3))  # disjoint from the others, for id PNGs
    scenes.append(Scene("img_empty", np.full((h, w, 3), 90, np.uint8)))
    return scenes


def write_images(folder: Path, scenes: list[Scene]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for scene in scenes:
        cv2.imwrite(str(folder / f"{scene.stem}.png"), scene.image)
    return folder


def rle(mask: np.ndarray, compressed: bool = True) -> dict:
    if compressed:
        encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": list(mask.shape), "counts": encoded["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
    counts = ([0] if flat[0] else []) + runs.tolist()
    return {"size": list(mask.shape), "counts": counts}


def write_coco(root: Path, scenes: list[Scene], category_ids: dict[str, int], uncompressed_crowd: Instance | None = None) -> Path:
    """COCO JSON: polygons where the instance has one, compressed RLE otherwise; optionally one crowd
    instance as uncompressed RLE on the first image."""
    write_images(root / "images", scenes)
    images, annotations = [], []
    for image_id, scene in enumerate(scenes, start=10):
        h, w = scene.size
        images.append({"id": image_id, "file_name": f"{scene.stem}.png", "height": h, "width": w})
        extra = [(uncompressed_crowd, 1)] if uncompressed_crowd is not None and image_id == 10 else []
        for inst, crowd in [(i, 0) for i in scene.instances] + extra:
            x, y, bw, bh = mask_util.toBbox(mask_util.encode(np.asfortranarray(inst.mask.astype(np.uint8)))).tolist()
            segm = rle(inst.mask, compressed=not crowd) if crowd or inst.polygon is None else [inst.polygon]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[inst.label],
                "bbox": [x, y, bw, bh], "area": float(inst.mask.sum()), "iscrowd": crowd, "segmentation": segm,
            })  # fmt: skip
    categories = [{"id": i, "name": n} for n, i in category_ids.items()]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def write_labelme(root: Path, scenes: list[Scene], shape_type: str = "polygon") -> Path:
    """One LabelMe JSON next to each image; rectangles are written by two opposite corners."""
    write_images(root, scenes)
    for scene in scenes:
        h, w = scene.size
        shapes = []
        for inst in scene.instances:
            points = np.reshape(inst.polygon, (-1, 2))
            if shape_type == "rectangle":
                points = np.array([points.max(0), points.min(0)])  # LabelMe allows either corner order
            shapes.append({"label": inst.label, "points": points.tolist(), "shape_type": shape_type, "group_id": None})
        data = {"imagePath": f"{scene.stem}.png", "imageHeight": h, "imageWidth": w, "shapes": shapes}
        (root / f"{scene.stem}.json").write_text(json.dumps(data))
    return root


def write_binary_masks(root: Path, scenes: list[Scene]) -> tuple[Path, Path]:
    images = write_images(root / "images", scenes)
    masks = root / "masks"
    for scene in scenes:
        for k, inst in enumerate(scene.instances):
            folder = masks / scene.stem / inst.label
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{k}.png"), inst.mask.astype(np.uint8) * 255)
    return images, masks


def write_instance_id_png(root: Path, scenes: list[Scene], first_id: int = 300) -> tuple[Path, Path, Path]:
    """16-bit instance-id PNGs (ids from ``first_id``, beyond 8 bits) plus the class map."""
    images = write_images(root / "images", scenes)
    ids = root / "ids"
    ids.mkdir(parents=True)
    class_map = {}
    for scene in scenes:
        canvas = np.zeros(scene.size, np.uint16)
        class_map[scene.stem] = {}
        for k, inst in enumerate(scene.instances):
            canvas[inst.mask] = first_id + k
            class_map[scene.stem][str(first_id + k)] = inst.label
        cv2.imwrite(str(ids / f"{scene.stem}.png"), canvas)
    (root / "class_map.json").write_text(json.dumps(class_map))
    return images, ids, root / "class_map.json"


def label_map_ids(dtype: type, count: int) -> list[int]:
    """Non-contiguous instance ids ending at the largest value ``dtype`` holds (a 32-bit one for uint32)."""
    top = int(np.iinfo(dtype).max)
    return [top - 7 * k for k in range(count)]


def write_label_map(path: Path, values: np.ndarray) -> Path:
    """An integer image as PNG (OpenCV: 8 or 16 bits) or TIFF (tifffile: any integer dtype)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, values)
    else:
        cv2.imwrite(str(path), values)
    return path


def write_label_maps(
    root: Path, scenes: list[Scene], dtype: type = np.uint16, extension: str = ".png", mask_suffix: str = "",
    classes: list[str] | None = None,
) -> tuple[Path, Path]:  # fmt: skip
    """``images/`` and ``masks/<stem><mask_suffix><extension>`` instance label maps (ids from ``label_map_ids``),
    the sidecar ``class_map.json`` (image -> id -> class) and, with ``classes``, the sidecar class maps
    ``classes/<stem><extension>`` (1-based indices into ``classes``)."""
    images = write_images(root / "images", scenes)
    table = {}
    for scene in scenes:
        ids = np.zeros(scene.size, dtype)
        class_values = np.zeros(scene.size, np.uint8)
        table[scene.stem] = {}
        for instance_id, inst in zip(label_map_ids(dtype, len(scene.instances)), scene.instances):
            ids[inst.mask] = instance_id
            table[scene.stem][str(instance_id)] = inst.label
            if classes:
                class_values[inst.mask] = classes.index(inst.label) + 1
        write_label_map(root / "masks" / f"{scene.stem}{mask_suffix}{extension}", ids)
        if classes:
            write_label_map(root / "classes" / f"{scene.stem}{extension}", class_values)
    (root / "class_map.json").write_text(json.dumps(table))
    return images, root / "masks"


def write_yolo(root: Path, scenes: list[Scene], names: list[str]) -> tuple[Path, Path, Path]:
    images = write_images(root / "images", scenes)
    labels = root / "labels"
    labels.mkdir(parents=True)
    for scene in scenes:
        h, w = scene.size
        lines = []
        for inst in scene.instances:
            xy = np.reshape(inst.polygon, (-1, 2)) / [w, h]
            lines.append(" ".join([str(names.index(inst.label))] + [f"{v:.6f}" for v in xy.ravel()]))
        (labels / f"{scene.stem}.txt").write_text("\n".join(lines) + "\n")
    names_file = root / "names.txt"
    names_file.write_text("\n".join(names) + "\n")
    return images, labels, names_file


def annotation_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    segm = annotation["segmentation"]
    if isinstance(segm, dict):
        return mask_util.decode(segm).astype(bool)
    return polygons_to_bitmask([np.asarray(p) for p in segm], height, width)


def loaded_instances(records: list[dict], thing_classes: list[str]) -> dict[str, list[tuple[str, bytes]]]:
    """Per image stem, the sorted (class, mask bytes) of every instance: comparable with ``source_instances``."""
    out = {}
    for record in records:
        h, w = record["height"], record["width"]
        items = [(thing_classes[a["category_id"]], annotation_mask(a, h, w).tobytes()) for a in record["annotations"]]
        out[Path(record["file_name"]).stem] = sorted(items)
    return out


def source_instances(scenes: list[Scene]) -> dict[str, list[tuple[str, bytes]]]:
    return {s.stem: sorted((i.label, i.mask.tobytes()) for i in s.instances) for s in scenes}


def box_xyxy(annotation: dict) -> list[float]:
    return list(BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS))
