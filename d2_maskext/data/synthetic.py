"""Built-in synthetic instance-segmentation dataset, generated deterministically and cached on disk.

Shapes are chosen so that mask quality matters: rings and frames have holes, stars, crosses and
crescents are non-convex, instances occlude each other (each keeps at least half of its area visible),
sizes range from small to large, and both objects and background are textured. Each image depends only
on ``(seed, split, index)``, so any subset can be regenerated bit-exactly.

``pixel_dtype`` and ``bands`` make scientific-image variants of the same scenes, written as TIFF: uint16
values spread over 3,000-59,000 (an 8-bit reader clips them all to white), float32 in [0, 1], and 1 or N
bands (1: grey; more than 3: the colour channels repeated with mixtures of two of them).
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import tifffile
from tqdm import tqdm

from ..utils.atomic_file import atomic_open
from ..utils.rle import mask_to_rle
from .boundary_shapes import BOUNDARY_CLASSES, draw_boundary_shape

logger = logging.getLogger(__name__)

SYNTHETIC_CLASSES: tuple[str, ...] = ("ring", "star", "cross", "crescent", "frame")
# "demo": the demo's shapes, below; "boundary": large shapes with teeth, spokes, strokes (boundary_shapes.py).
SHAPE_SETS: dict[str, tuple[str, ...]] = {"demo": SYNTHETIC_CLASSES, "boundary": BOUNDARY_CLASSES}
GENERATOR_VERSION = 2
MIN_CONTRAST = 80.0  # minimum RGB distance between an object's base colour and what it covers
_SPLIT_OFFSETS = {"train": 0, "val": 1_000_003, "test": 2_000_029}
PIXEL_DTYPES = ("uint8", "uint16", "float32")
UINT16_OFFSET, UINT16_SCALE = 3000.0, 56000.0 / 255.0  # 8-bit levels 0..255 -> 3,000..59,000


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated images; part of the cache key."""

    split: str = "train"
    num_images: int = 600
    image_size: int = 256
    seed: int = 0
    min_instances: int = 2
    max_instances: int = 7
    min_size: float = 16.0
    max_size: float = 110.0
    max_occlusion: float = 0.5
    pixel_dtype: str = "uint8"  # one of PIXEL_DTYPES
    bands: int = 3
    shapes: str = "demo"  # a key of SHAPE_SETS

    @property
    def classes(self) -> tuple[str, ...]:
        if self.shapes not in SHAPE_SETS:
            raise ValueError(f"shapes must be one of {sorted(SHAPE_SETS)}, got {self.shapes!r}")
        return SHAPE_SETS[self.shapes]

    @property
    def is_rgb8(self) -> bool:
        """The original 8-bit colour images (PNG); other specs are written as TIFF and read with ``RAW``."""
        return self.pixel_dtype == "uint8" and self.bands == 3

    def cache_name(self) -> str:
        name = (
            f"v{GENERATOR_VERSION}_{self.split}_n{self.num_images}_s{self.image_size}_seed{self.seed}"
            f"_i{self.min_instances}-{self.max_instances}_z{self.min_size:g}-{self.max_size:g}_o{self.max_occlusion:g}"
        )
        name = name if self.is_rgb8 else f"{name}_{self.pixel_dtype}_b{self.bands}"
        return name if self.shapes == "demo" else f"{name}_{self.shapes}"

    def info(self) -> dict:
        """The spec as stored in the COCO file; keys at their defaults that predate the first split are left
        out (the pixel keys of 8-bit colour specs, the demo shapes), as before they existed."""
        info = asdict(self)
        if self.is_rgb8:
            del info["pixel_dtype"], info["bands"]
        if self.shapes == "demo":
            del info["shapes"]
        return info


def default_root() -> Path:
    """``$D2MX_DATASETS`` or ``./datasets`` (like Detectron2's ``DETECTRON2_DATASETS``), plus ``maskext_synth``."""
    return Path(os.environ.get("D2MX_DATASETS", "datasets")) / "maskext_synth"


# ----------------------------------------------------------------------------------------------- shapes
def _regular_polygon(radii: np.ndarray, angle0: float) -> np.ndarray:
    angles = angle0 + np.linspace(0.0, 2 * np.pi, len(radii), endpoint=False)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _fill(canvas: np.ndarray, center: np.ndarray, points: np.ndarray, value: int) -> None:
    """Rasterize a polygon given relative to ``center`` with 4-bit sub-pixel precision."""
    pts = np.round((points + center) * 16).astype(np.int32)
    cv2.fillPoly(canvas, [pts], value, lineType=cv2.LINE_8, shift=4)


def _ellipse(canvas: np.ndarray, center: np.ndarray, axes: tuple[float, float], angle: float, value: int) -> None:
    n = 64
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = _rotate(np.stack([axes[0] * np.cos(t), axes[1] * np.sin(t)], axis=1), angle)
    _fill(canvas, center, pts, value)


def _draw_demo_shape(cls: int, canvas: np.ndarray, center: np.ndarray, size: float, rng: np.random.Generator) -> None:
    """Draw class ``cls`` with diameter ~``size`` into the uint8 ``canvas`` (1 = object)."""
    r = size / 2
    angle = rng.uniform(0, 2 * np.pi)
    name = SYNTHETIC_CLASSES[cls]
    if name == "ring":
        aspect = rng.uniform(0.7, 1.0)
        _ellipse(canvas, center, (r, r * aspect), angle, 1)
        hole = rng.uniform(0.4, 0.65)
        _ellipse(canvas, center, (r * hole, r * aspect * hole), angle, 0)
    elif name == "star":
        n_points = int(rng.integers(5, 8))
        radii = np.tile([r, r * rng.uniform(0.38, 0.55)], n_points)
        _fill(canvas, center, _regular_polygon(radii, angle), 1)
    elif name == "cross":
        w = r * rng.uniform(0.3, 0.45)
        arm = np.array([[-r, -w], [r, -w], [r, w], [-r, w]])
        _fill(canvas, center, _rotate(arm, angle), 1)
        _fill(canvas, center, _rotate(arm[:, ::-1], angle), 1)
    elif name == "crescent":
        _ellipse(canvas, center, (r, r), 0.0, 1)
        offset = _rotate(np.array([[r * rng.uniform(0.35, 0.55), 0.0]]), angle)[0]
        _ellipse(canvas, center + offset, (r * 0.85, r * 0.85), 0.0, 0)
    elif name == "frame":
        square = np.array([[-r, -r], [r, -r], [r, r], [-r, r]]) * 0.8
        _fill(canvas, center, _rotate(square, angle), 1)
        _fill(canvas, center, _rotate(square * rng.uniform(0.45, 0.62), angle), 0)
    else:  # pragma: no cover - SYNTHETIC_CLASSES and this function change together
        raise AssertionError(name)


# ------------------------------------------------------------------------------------------- textures
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    small = rng.random((cells, cells, 3)).astype(np.float32)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    img = base + 60 * (_smooth_noise(rng, size, int(rng.integers(3, 9))) - 0.5)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(6, 30)
    stripes = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)
    img += rng.uniform(5, 25) * stripes[..., None] * rng.uniform(-1, 1, size=3).astype(np.float32)
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    return img


def _object_texture(rng: np.random.Generator, size: int, backdrop: np.ndarray) -> np.ndarray:
    """Textured fill whose base colour differs from ``backdrop`` (the mean colour it is painted over),
    so every labelled instance is actually visible."""
    color = rng.uniform(20, 235, size=3).astype(np.float32)
    for _ in range(20):
        if np.linalg.norm(color - backdrop) >= MIN_CONTRAST:
            break
        color = rng.uniform(20, 235, size=3).astype(np.float32)
    tex = color + 45 * (_smooth_noise(rng, size, int(rng.integers(4, 16))) - 0.5)
    return tex + rng.normal(0, 8, size=tex.shape).astype(np.float32)


# ------------------------------------------------------------------------------------------ generation
def generate_image(spec: SyntheticSpec, index: int) -> tuple[np.ndarray, list[dict]]:
    """Return the BGR uint8 image and its annotations (visible masks as uint8 arrays) for one index."""
    rng = np.random.default_rng([spec.seed, _SPLIT_OFFSETS.get(spec.split, 3_000_017), index])
    s = spec.image_size
    img = _background(rng, s)
    visible: list[np.ndarray] = []
    classes: list[int] = []
    num_classes = len(spec.classes)
    draw = draw_boundary_shape if spec.shapes == "boundary" else _draw_demo_shape
    target = int(rng.integers(spec.min_instances, spec.max_instances + 1))
    for _ in range(target * 6):
        if len(classes) == target:
            break
        cls = int(rng.integers(num_classes))
        size = float(np.exp(rng.uniform(np.log(spec.min_size), np.log(spec.max_size))))
        center = rng.uniform(size * 0.3, s - size * 0.3, size=2)
        full = np.zeros((s, s), np.uint8)
        draw(cls, full, center, size, rng)
        if full.sum() < 16:
            continue
        # The new shape is painted on top: keep it only if every earlier instance stays mostly visible.
        occluded = [m & (1 - full) for m in visible]
        if any(o.sum() < (1 - spec.max_occlusion) * m.sum() for o, m in zip(occluded, visible)):
            continue
        visible = occluded + [full]
        classes.append(cls)
        tex = _object_texture(rng, s, img[full > 0].mean(axis=0))
        img = np.where(full[..., None] > 0, tex, img)
    annotations = [{"category_id": c, "mask": m} for c, m in zip(classes, visible)]
    return _pixels(np.clip(img, 0, 255), spec), annotations


def _pixels(levels: np.ndarray, spec: SyntheticSpec) -> np.ndarray:
    """The (H, W, 3) float BGR levels in [0, 255] in the spec's dtype and band count."""
    if spec.pixel_dtype not in PIXEL_DTYPES:
        raise ValueError(f"pixel_dtype must be one of {PIXEL_DTYPES}, got {spec.pixel_dtype!r}")
    if spec.is_rgb8:
        return levels.astype(np.uint8)
    if spec.bands == 1:
        bands = levels @ np.array([0.114, 0.587, 0.299], np.float32)  # BGR luma
    else:
        mixes = [levels[..., k % 3] if k < 3 else (levels[..., k % 3] + levels[..., (k + 1) % 3]) / 2 for k in range(spec.bands)]
        bands = np.stack(mixes, axis=2)
    if spec.pixel_dtype == "uint16":
        return np.round(bands * UINT16_SCALE + UINT16_OFFSET).astype(np.uint16)
    if spec.pixel_dtype == "float32":
        return (bands / 255.0).astype(np.float32)
    return np.round(bands).astype(np.uint8)


def _encode(image: np.ndarray, spec: SyntheticSpec) -> tuple[str, bytes]:
    """(file extension, file bytes): PNG for 8-bit colour, else TIFF (bands interleaved)."""
    if spec.is_rgb8:
        ok, png = cv2.imencode(".png", image)
        if not ok:  # pragma: no cover - cv2 always encodes uint8 BGR
            raise RuntimeError("could not encode a synthetic image")
        return ".png", png.tobytes()
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, photometric="minisblack", planarconfig="contig" if image.ndim == 3 else None)
    return ".tif", buffer.getvalue()


def mask_to_coco_annotation(mask: np.ndarray, category_id: int, ann_id: int, image_id: int) -> dict:
    """COCO annotation with compressed RLE (exact, holes included) and a tight XYWH box."""
    rle = mask_to_rle(mask)
    x, y, w, h = (float(v) for v in mask_util.toBbox(rle))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": rle,
        "area": float(mask_util.area(rle)),
        "bbox": [x, y, w, h],
        "iscrowd": 0,
    }


def _write_bytes(path: Path, data: bytes) -> None:
    """Atomically, not durably: a split lost in a machine crash is generated again."""
    with atomic_open(path, "wb", durable=False) as f:
        f.write(data)


def ensure_generated(spec: SyntheticSpec, root: Path | None = None) -> Path:
    """Generate the split under ``root`` unless already cached; return the COCO JSON path.

    The JSON is written last and atomically, so its presence marks a complete split; concurrent
    generators (e.g. several ``launch`` workers) write identical files and cannot corrupt each other.
    """
    out = (root or default_root()) / spec.cache_name()
    json_path = out / "annotations.json"
    if json_path.is_file():
        return json_path
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in tqdm(range(spec.num_images), desc=f"generating synthetic {spec.split}", unit="img", leave=False):
        image, anns = generate_image(spec, index)
        extension, data = _encode(image, spec)
        file_name = f"{index:06d}{extension}"
        _write_bytes(out / "images" / file_name, data)
        images.append({"id": index, "file_name": file_name, "height": spec.image_size, "width": spec.image_size})
        for ann in anns:
            annotations.append(mask_to_coco_annotation(ann["mask"], ann["category_id"] + 1, len(annotations) + 1, index))
    coco = {
        "info": {"description": "d2_maskext synthetic dataset", "spec": spec.info()},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(spec.classes)],
    }
    _write_bytes(json_path, json.dumps(coco).encode())
    logger.info("generated %d synthetic %s images with %d instances in %s", len(images), spec.split, len(annotations), out)
    return json_path


_SYNTHETIC_NAMES: set[str] = set()


def is_synthetic(name: str) -> bool:
    """Whether ``name`` was registered by :func:`register_synthetic` (its masks are RLE, known unloaded)."""
    return name in _SYNTHETIC_NAMES


def register_synthetic(name: str, spec: SyntheticSpec, root: Path | None = None) -> None:
    """Register ``name`` in Detectron2's catalogs; images are generated on first use and cached."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.coco import load_coco_json

    base = root or default_root()
    json_path = base / spec.cache_name() / "annotations.json"

    def load() -> list[dict]:
        path = ensure_generated(spec, base)
        return load_coco_json(str(path), str(path.parent / "images"), name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(spec.classes),
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(spec.classes))},
        json_file=str(json_path),
        image_root=str(json_path.parent / "images"),
        evaluator_type="coco",
    )
    _SYNTHETIC_NAMES.add(name)


BUILTIN_SYNTHETIC: dict[str, SyntheticSpec] = {
    "maskext_synth_train": SyntheticSpec(split="train", num_images=1000),
    "maskext_synth_val": SyntheticSpec(split="val", num_images=150),
    "maskext_synth_tiny_train": SyntheticSpec(split="train", num_images=16, image_size=128, min_size=16, max_size=60),
    "maskext_synth_tiny_val": SyntheticSpec(split="val", num_images=8, image_size=128, min_size=16, max_size=60),
    # The tiny splits as single-channel 16-bit images (INPUT.FORMAT "RAW"), like fluorescence or CT.
    "maskext_synth_tiny_train_u16": SyntheticSpec(
        split="train", num_images=16, image_size=128, min_size=16, max_size=60, pixel_dtype="uint16", bands=1
    ),
    "maskext_synth_tiny_val_u16": SyntheticSpec(
        split="val", num_images=8, image_size=128, min_size=16, max_size=60, pixel_dtype="uint16", bands=1
    ),
    # The demo's splits as single-channel 16-bit images (benchmarks/bench_raw_images.py).
    "maskext_synth_train_u16": SyntheticSpec(split="train", num_images=1000, pixel_dtype="uint16", bands=1),
    "maskext_synth_val_u16": SyntheticSpec(split="val", num_images=150, pixel_dtype="uint16", bands=1),
    # Boundary stress (benchmarks/bench_heads.py): 150-500 px gears, wheels, letters, twigs and spirals in 640 px images.
    "maskext_boundary_train": SyntheticSpec(
        split="train", num_images=600, image_size=640, min_instances=2, max_instances=5, min_size=150, max_size=500,
        shapes="boundary",
    ),
    "maskext_boundary_val": SyntheticSpec(
        split="val", num_images=100, image_size=640, min_instances=2, max_instances=5, min_size=150, max_size=500,
        shapes="boundary",
    ),
}


def register_builtin_synthetic() -> None:
    """Register the built-in splits (called on ``import d2_maskext``; cheap: nothing is generated yet)."""
    from detectron2.data import DatasetCatalog

    for name, spec in BUILTIN_SYNTHETIC.items():
        if name not in DatasetCatalog.list():
            register_synthetic(name, spec)


# --------------------------------------------------------------------------------------- large mosaics
def mosaic_scene(
    spec: SyntheticSpec, grid: tuple[int, int], first: int = 0, image_id: int = 0, with_annotations: bool = True
) -> tuple[np.ndarray, list[dict]]:
    """A ``rows x cols`` mosaic of the split's images ``first, first + 1, ...`` (cycling through the split) at
    native size, and its COCO annotations in mosaic pixels (empty without ``with_annotations``).

    Tiled inference is measured on these: objects keep the size the model was trained on, while the scene
    is far larger than the model's input size.
    """
    rows, cols = grid
    s = spec.image_size
    scene = np.empty((rows * s, cols * s, 3), np.uint8)
    annotations: list[dict] = []
    canvas = np.zeros(scene.shape[:2], np.uint8) if with_annotations else None
    generated: dict[int, tuple[np.ndarray, list[dict]]] = {}
    for cell in range(rows * cols):
        index = (first + cell) % spec.num_images
        if index not in generated:
            generated[index] = generate_image(spec, index)
        image, anns = generated[index]
        y, x = (cell // cols) * s, (cell % cols) * s
        scene[y : y + s, x : x + s] = image
        for ann in anns if canvas is not None else ():
            canvas[y : y + s, x : x + s] = ann["mask"]
            annotations.append(
                mask_to_coco_annotation(canvas, ann["category_id"] + 1, len(annotations) + 1, image_id)
            )
            canvas[y : y + s, x : x + s] = 0
    return scene, annotations


def ensure_mosaics(spec: SyntheticSpec, grid: tuple[int, int], root: Path | None = None) -> Path:
    """Write (once, cached) the split as ``num_images // (rows * cols)`` mosaics of :func:`mosaic_scene`
    (a remainder of images is left out) with a COCO JSON, and return the JSON path."""
    rows, cols = grid
    per_scene = rows * cols
    out = (root or default_root()) / f"{spec.cache_name()}_mosaic{rows}x{cols}"
    json_path = out / "annotations.json"
    if json_path.is_file():
        return json_path
    (out / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in tqdm(range(spec.num_images // per_scene), desc="building mosaics", unit="scene", leave=False):
        scene, anns = mosaic_scene(spec, grid, first=image_id * per_scene, image_id=image_id)
        file_name = f"{image_id:06d}.png"
        ok, png = cv2.imencode(".png", scene)
        if not ok:  # pragma: no cover - cv2 always encodes uint8 BGR
            raise RuntimeError(f"could not encode mosaic {image_id}")
        _write_bytes(out / "images" / file_name, png.tobytes())
        images.append({"id": image_id, "file_name": file_name, "height": scene.shape[0], "width": scene.shape[1]})
        for ann in anns:
            annotations.append({**ann, "id": len(annotations) + 1})
    coco = {
        "info": {"description": "d2_maskext synthetic mosaics", "spec": spec.info(), "grid": [rows, cols]},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(spec.classes)],
    }
    _write_bytes(json_path, json.dumps(coco).encode())
    return json_path
