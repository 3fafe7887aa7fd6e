"""Predictions written as polygons (LabelMe, CVAT for images 1.1, GeoJSON) and read back: the masks survive.

Unit tests on hard shapes (a ring, two parts, one-pixel lines, an island in a hole), the writers read back
through the package's own readers, the GeoTIFF georeferencing, the CVAT reader's problems, and one run of
``tools/predict.py`` with every output format.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import tifffile
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.catalog import Metadata
from detectron2.structures import Boxes, Instances
from helpers.train_net_runner import TINY_CONFIG, load_script
from pycocotools.coco import COCO

from d2_maskext.data.formats import DatasetSource, ProblemLog, Severity, load_dataset
from d2_maskext.data.writers import (
    DEFAULT_POLYGON_TOLERANCE,
    ImagePolygons,
    PolygonStats,
    build_writer,
    polygonize_instances,
    read_geotransform,
)
from d2_maskext.modeling.tiling import RLEMasks
from d2_maskext.predict import predict
from d2_maskext.utils.polygons import mask_to_polygons, polygons_to_mask, rings_to_mask
from d2_maskext.utils.rle import mask_to_rle

HEIGHT, WIDTH = 48, 64
CLASSES = ["blob", "line"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _hard_shapes() -> dict[str, np.ndarray]:
    shapes = {name: np.zeros((HEIGHT, WIDTH), np.uint8) for name in ("ring", "two_parts", "hline", "diagonal",
                                                                      "pixel", "island_in_hole", "disc")}  # fmt: skip
    cv2.circle(shapes["ring"], (30, 24), 14, 1, -1)
    cv2.circle(shapes["ring"], (30, 24), 6, 0, -1)
    shapes["two_parts"][5:12, 5:14] = 1
    cv2.circle(shapes["two_parts"], (45, 30), 9, 1, -1)
    shapes["hline"][20, 3:50] = 1
    np.fill_diagonal(shapes["diagonal"][4:40, 10:46], 1)
    shapes["pixel"][7, 9] = 1
    shapes["island_in_hole"][4:44, 4:44] = 1
    shapes["island_in_hole"][10:38, 10:38] = 0
    shapes["island_in_hole"][18:30, 18:30] = 1
    cv2.circle(shapes["disc"], (20, 20), 10, 1, -1)
    return {name: mask.astype(bool) for name, mask in shapes.items()}


HARD_SHAPES = _hard_shapes()


@pytest.mark.parametrize("name", sorted(HARD_SHAPES))
def test_polygons_rasterize_back_to_the_mask(name):
    mask = HARD_SHAPES[name]
    exact = mask_to_polygons(mask, tolerance=0).parts
    assert np.array_equal(polygons_to_mask(exact, HEIGHT, WIDTH), mask)
    simplified = mask_to_polygons(mask, tolerance=DEFAULT_POLYGON_TOLERANCE).parts
    assert _iou(polygons_to_mask(simplified, HEIGHT, WIDTH), mask) >= 0.95
    assert sum(len(p.exterior) for p in simplified) <= sum(len(p.exterior) for p in exact)


def test_parts_and_holes_follow_the_mask_topology():
    assert [len(p.holes) for p in mask_to_polygons(HARD_SHAPES["ring"]).parts] == [1]
    assert len(mask_to_polygons(HARD_SHAPES["two_parts"]).parts) == 2
    assert sorted(len(p.holes) for p in mask_to_polygons(HARD_SHAPES["island_in_hole"]).parts) == [0, 1]
    assert mask_to_polygons(np.zeros((HEIGHT, WIDTH), bool)).parts == []


def test_rings_of_fewer_than_three_points_fill_nothing():
    assert not rings_to_mask([[1, 1, 9, 9], [[2, 2]]], [], HEIGHT, WIDTH).any()


def test_min_area_drops_small_parts_and_holes_and_counts_them():
    mask = HARD_SHAPES["two_parts"].copy()
    mask[40, 2] = True  # a one-pixel part
    mask[30, 45] = False  # a one-pixel hole in the disc
    result = mask_to_polygons(mask, min_area=10)
    assert (len(result.parts), result.dropped_parts, result.dropped_holes) == (2, 1, 1)
    filled = mask.copy()
    filled[40, 2], filled[30, 45] = False, True
    assert np.array_equal(polygons_to_mask(result.parts, HEIGHT, WIDTH), filled)


def test_empty_and_too_small_instances_are_skipped_and_counted():
    masks = np.stack([HARD_SHAPES["disc"], np.zeros((HEIGHT, WIDTH), bool), HARD_SHAPES["pixel"]])
    stats = PolygonStats()
    instances = polygonize_instances(masks, [0, 0, 1], [0.9, 0.8, 0.7], CLASSES, [5, 6], 0.5, 2.0, stats)
    assert [(i.class_name, i.category_id, i.score) for i in instances] == [("blob", 5, 0.9)]
    assert (stats.skipped_instances, stats.dropped_parts) == (2, 1)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """Two images with hard shapes as predictions, written in every polygon format at the default tolerance."""
    root = tmp_path_factory.mktemp("writers")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    names = {"a.png": ["ring", "two_parts", "hline"], "sub/b.png": ["diagonal", "island_in_hole", "pixel", "disc"]}
    writers = [build_writer(name, root / "out", CLASSES) for name in ("labelme", "cvat", "geojson")]
    for name, shapes in names.items():
        cv2.imwrite(str(images / name), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
        masks = np.stack([HARD_SHAPES[s] for s in shapes])
        classes = [int(s in ("hline", "diagonal")) for s in shapes]
        instances = polygonize_instances(
            masks, classes, np.linspace(0.9, 0.5, len(shapes)), CLASSES, [1, 2], DEFAULT_POLYGON_TOLERANCE, 0, PolygonStats()
        )
        for writer in writers:
            writer.write(ImagePolygons(name, images / name, HEIGHT, WIDTH, instances))
    for writer in writers:
        writer.close()
    return root, {name: [HARD_SHAPES[s] for s in shapes] for name, shapes in names.items()}


def _load(name: str, fmt: str, image_root: Path, annotations: Path, **kwargs) -> tuple[list[dict], list[str], ProblemLog]:
    problems = ProblemLog(name)
    loaded = load_dataset(DatasetSource(name, fmt, image_root, annotations, **kwargs), problems)
    return loaded.records, loaded.thing_classes, problems


def _annotation_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, dict):
        return mask_util.decode(segmentation).astype(bool)
    return rings_to_mask(segmentation, [], height, width)


@pytest.mark.parametrize("fmt", ["labelme", "cvat"])
def test_written_polygons_read_back_through_the_package_readers(written, fmt):
    root, expected = written
    annotations = root / "out" / ("labelme" if fmt == "labelme" else "cvat/annotations.xml")
    records, classes, problems = _load(f"roundtrip_{fmt}", fmt, root / "images", annotations)
    assert not problems.counts, problems.report()
    assert classes == CLASSES
    by_image = {Path(r["file_name"]).relative_to(root / "images").as_posix(): r for r in records}
    assert sorted(by_image) == sorted(expected)
    for name, masks in expected.items():
        record = by_image[name]
        read = [_annotation_mask(a, HEIGHT, WIDTH) for a in record["annotations"]]
        assert len(read) == len(masks)
        ious = [_iou(r, m) for r, m in zip(read, masks)]
        assert np.mean(ious) >= 0.95 and min(ious) >= 0.9, ious


def test_labelme_files_point_at_the_image_and_mark_holes_in_a_group(written):
    root, _ = written
    document = json.loads((root / "out" / "labelme" / "a.json").read_text())
    assert document["imagePath"] == "../../images/a.png" and document["imageData"] is None
    assert (document["imageHeight"], document["imageWidth"]) == (HEIGHT, WIDTH)
    ring = [s for s in document["shapes"] if s["description"] == "score=0.9"]
    assert [s["flags"] for s in ring] == [{}, {"hole": True}] and ring[0]["group_id"] == ring[1]["group_id"] == 1
    line = document["shapes"][-1]
    assert (line["label"], line["group_id"], line["shape_type"]) == ("line", None, "polygon")
    assert json.loads((root / "out" / "labelme" / "sub" / "b.json").read_text())["imagePath"] == "../../../images/sub/b.png"


def test_cvat_xml_declares_labels_with_score_and_hole_attributes(written):
    root, _ = written
    tree = ET.parse(root / "out" / "cvat" / "annotations.xml").getroot()
    assert tree.findtext("version") == "1.1" and tree.findtext("meta/task/size") == "2"
    labels = tree.findall("meta/task/labels/label")
    assert [label.findtext("name") for label in labels] == CLASSES
    assert [a.findtext("name") for a in labels[0].findall("attributes/attribute")] == ["score", "hole"]
    image = tree.findall("image")[0]
    assert (image.get("name"), image.get("width"), image.get("height")) == ("a.png", str(WIDTH), str(HEIGHT))
    polygon = image.find("polygon")
    assert polygon.get("label") == "blob" and polygon.findtext("attribute[@name='score']") == "0.9"
    assert not list((root / "out" / "cvat").glob(".*part"))


def test_geojson_has_polygons_with_holes_and_multipolygons_in_pixels(written):
    root, expected = written
    collection = json.loads((root / "out" / "geojson" / "a.geojson").read_text())
    assert collection["coordinate_space"] == "pixel" and "crs" not in collection
    ring, parts, line = collection["features"]
    assert ring["properties"] == {"class": "blob", "score": 0.9, "category_id": 1}
    assert ring["geometry"]["type"] == "Polygon" and len(ring["geometry"]["coordinates"]) == 2
    assert parts["geometry"]["type"] == "MultiPolygon" and len(parts["geometry"]["coordinates"]) == 2
    assert line["properties"]["class"] == "line"
    exterior, hole = (np.asarray(r) for r in ring["geometry"]["coordinates"])
    assert np.array_equal(exterior[0], exterior[-1])
    signed = [float(np.sum(r[:-1, 0] * r[1:, 1] - r[1:, 0] * r[:-1, 1])) for r in (exterior, hole)]
    assert signed[0] > 0 > signed[1]  # RFC 7946: exterior counterclockwise, holes clockwise
    mask = rings_to_mask([exterior], [hole], HEIGHT, WIDTH)
    assert _iou(mask, expected["a.png"][0]) >= 0.95


def _geotiff(path: Path, keys: list[int], **tags: tuple) -> None:
    directory = [1, 1, 0, len(keys) // 4, *keys]
    codes = {"scale": (33550, 3), "tiepoint": (33922, 6), "transformation": (34264, 16)}
    extratags = [(codes[k][0], "d", codes[k][1], v, True) for k, v in tags.items()]
    extratags.append((34735, "H", len(directory), directory, True))
    tifffile.imwrite(path, np.zeros((HEIGHT, WIDTH, 3), np.uint8), photometric="rgb", extratags=extratags)


UTM33 = [1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633]  # projected, PixelIsArea, EPSG:32633
SCALE_TIEPOINT = {"scale": (10.0, 10.0, 0.0), "tiepoint": (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0)}


def test_geotiff_georeferencing_gives_map_coordinates_and_epsg(tmp_path):
    _geotiff(tmp_path / "area.tif", UTM33, **SCALE_TIEPOINT)
    point_keys = list(UTM33)
    point_keys[7] = 2  # GTRasterTypeGeoKey: PixelIsPoint
    _geotiff(tmp_path / "point.tif", point_keys, **SCALE_TIEPOINT)
    matrix = (10.0, 0, 0, 500000.0, 0, -10.0, 0, 4000000.0, 0, 0, 0, 0, 0, 0, 0, 1)
    _geotiff(tmp_path / "matrix.tif", [1024, 0, 1, 2, 2048, 0, 1, 4326], transformation=matrix)
    corners = np.array([[0.0, 0.0], [WIDTH, HEIGHT]])
    area = read_geotransform(tmp_path / "area.tif")
    assert area.epsg == 32633
    assert np.allclose(area.apply(corners), [[500000, 4000000], [500640, 3999520]])
    assert np.allclose(read_geotransform(tmp_path / "point.tif").apply(corners), [[499995, 4000005], [500635, 3999525]])
    by_matrix = read_geotransform(tmp_path / "matrix.tif")
    assert by_matrix.epsg == 4326 and np.allclose(by_matrix.apply(corners), area.apply(corners))
    cv2.imwrite(str(tmp_path / "plain.tif"), np.zeros((4, 4), np.uint8))
    assert read_geotransform(tmp_path / "plain.tif") is None and read_geotransform(tmp_path / "x.png") is None

    writer = build_writer("geojson", tmp_path / "out", CLASSES)
    instances = polygonize_instances(HARD_SHAPES["pixel"][None], [0], [0.5], CLASSES, [1, 2], 0, 0, PolygonStats())
    writer.write(ImagePolygons("area.tif", tmp_path / "area.tif", HEIGHT, WIDTH, instances))
    collection = json.loads((writer.close() / "area.geojson").read_text())
    assert collection["coordinate_space"] == "map"
    assert collection["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    ring = np.asarray(collection["features"][0]["geometry"]["coordinates"][0])
    assert np.allclose(ring.min(0), [500090, 3999920]) and np.allclose(ring.max(0), [500100, 3999930])


def _cvat_xml(images: str) -> str:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
<meta><task><labels><label><name>cat</name></label><label><name>dog</name></label></labels></task></meta>
{images}
</annotations>"""


def test_cvat_reader_reads_boxes_masks_and_groups_and_reports_the_rest(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    # mask: a 3x2 box at (10, 5) with rows 1 1 0 / 0 1 1
    (tmp_path / "a.xml").write_text(_cvat_xml("""
<image id="0" name="a.png" width="64" height="48">
  <box label="dog" xtl="2" ytl="3" xbr="12" ybr="9" occluded="0"/>
  <mask label="cat" rle="0, 2, 2, 2" left="10" top="5" width="3" height="2"/>
  <polygon label="cat" points="20,20;30,20;30,30;20,30" group_id="4"/>
  <polygon label="cat" points="40,20;45,20;45,25;40,25" group_id="4"/>
  <polyline label="cat" points="1,1;5,5"/>
</image>"""))
    records, classes, problems = _load("cvat_shapes", "cvat", tmp_path, tmp_path / "a.xml")
    assert classes == ["cat", "dog"] and dict(problems.counts) == {"unsupported_shape": 1}
    box, mask, grouped = records[0]["annotations"]
    assert (box["category_id"], box["bbox"]) == (1, [2.0, 3.0, 12.0, 9.0])
    expected = np.zeros((HEIGHT, WIDTH), bool)
    expected[5, 10:12] = expected[6, 11:13] = True
    assert mask["category_id"] == 0 and np.array_equal(mask_util.decode(mask["segmentation"]).astype(bool), expected)
    assert len(grouped["segmentation"]) == 2


CVAT_2_EXPORT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <job>
      <id>7</id><size>1</size><mode>annotation</mode><overlap>0</overlap>
      <labels>
        <label>
          <name>roof</name><color>#fa3253</color><type>any</type>
          <attributes>
            <attribute><name>material</name><mutable>False</mutable><input_type>select</input_type>
              <default_value>tile</default_value><values>tile\nmetal</values></attribute>
          </attributes>
        </label>
        <label><name>pool</name><color>#33ddff</color><type>polygon</type><attributes/></label>
      </labels>
      <owner><username>someone</username><email>someone@example.com</email></owner>
    </job>
    <dumped>2026-11-30 10:00:00.000000+00:00</dumped>
  </meta>
  <image id="0" name="a.png" width="64" height="48">
    <box label="roof" source="manual" occluded="0" xtl="20.0" ytl="10.0" xbr="40.0" ybr="20.0" rotation="90.0" z_order="0">
      <attribute name="material">metal</attribute>
    </box>
    <polygon label="pool" source="manual" occluded="1" points="2.5,30.0;12.0,30.0;12.0,44.0;2.5,44.0" z_order="1">
    </polygon>
    <tag label="roof" source="manual"/>
  </image>
</annotations>
"""


def test_cvat_reader_reads_a_cvat_2_job_export(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    (tmp_path / "annotations.xml").write_text(CVAT_2_EXPORT)
    records, classes, problems = _load("cvat_2", "cvat", tmp_path, tmp_path / "annotations.xml")
    assert classes == ["roof", "pool"] and dict(problems.counts) == {"unsupported_shape": 1}  # the tag
    roof, pool = records[0]["annotations"]
    assert roof["category_id"] == 0 and np.allclose(roof["bbox"], [25, 5, 35, 25])  # turned a quarter about (30, 15)
    assert pool["category_id"] == 1 and pool["segmentation"] == [[2.5, 30.0, 12.0, 30.0, 12.0, 44.0, 2.5, 44.0]]


@pytest.mark.parametrize(
    "image, kind",
    [
        ('<image id="0" name="missing.png" width="64" height="48"/>', "missing_image"),
        ('<image id="0" name="a.png" width="64"/>', "malformed"),
        ('<image id="0" name="a.png" width="64" height="48"><polygon label="cat" points="1;2"/></image>', "malformed"),
        ('<image id="0" name="a.png" width="64" height="48"><mask label="cat" rle="0, 5" left="0" top="0" '
         'width="3" height="2"/></image>', "malformed"),
        ('<image id="0" name="a.png" width="64" height="48"><box label="bird" xtl="1" ytl="1" xbr="5" ybr="5"/></image>',
         "unknown_category"),
        ('<image id="0" name="../a.png" width="64" height="48"/>', "path_outside_root"),
        ('<track id="3" label="cat"/>', "unsupported_shape"),
        ("<image", "malformed"),
    ],
    ids=["missing_image", "no_height", "bad_points", "bad_rle", "unknown_label", "outside_root", "track", "bad_xml"],
)
def test_cvat_reader_names_the_file_and_the_problem(tmp_path, image, kind):
    root = tmp_path / "root"
    root.mkdir()
    cv2.imwrite(str(root / "a.png"), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    (root / "a.xml").write_text(_cvat_xml(image))
    _, _, problems = _load("cvat_bad", "cvat", root, root / "a.xml")
    assert problems.counts[kind] == 1
    assert str(root / "a.xml") in problems.report()


def test_labelme_hole_without_a_group_is_reported(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    shape = {"label": "cat", "points": [[1, 1], [9, 1], [9, 9]], "shape_type": "polygon", "group_id": None,
             "flags": {"hole": True}}  # fmt: skip
    document = {"imagePath": "a.png", "imageHeight": HEIGHT, "imageWidth": WIDTH, "shapes": [shape]}
    (tmp_path / "a.json").write_text(json.dumps(document))
    _, _, problems = _load("labelme_hole", "labelme", tmp_path, tmp_path)
    assert problems.counts["malformed"] == 1 and "group_id" in problems.report()


VAL = "maskext_synth_tiny_val"


def test_predict_tool_writes_every_format_and_they_read_back_as_the_coco_masks(tiny_random_weights, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for record in DatasetCatalog.get(VAL)[:3]:
        shutil.copy(record["file_name"], images / Path(record["file_name"]).name)
    out = tmp_path / "out"
    tool = load_script("tools/predict.py")
    tool.main(["--config-file", str(TINY_CONFIG), "--input", str(images), "--output", str(out), "--device", "cpu",
               "--score-threshold", "0.0", "--output-format", "coco", "labelme", "cvat", "geojson",
               "--opts", "MODEL.WEIGHTS", str(tiny_random_weights), "TEST.DETECTIONS_PER_IMAGE", "5"])  # fmt: skip
    printed = capsys.readouterr().out
    skipped = int(printed.split("polygons: ")[1].split()[0])
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / "images.json")).loadRes(str(out / "predictions.json"))
    predicted = {
        img["file_name"]: [mask_util.decode(a["segmentation"]).astype(bool) for a in coco.imgToAnns[img["id"]]]
        for img in coco.dataset["images"]
    }
    assert len(list((out / "geojson").glob("*.geojson"))) == 3
    for fmt, written_to in (("labelme", out / "labelme"), ("cvat", out / "cvat" / "annotations.xml")):
        records, _, problems = _load(f"predicted_{fmt}", fmt, images, written_to)
        assert problems.count(Severity.FATAL) == 0, problems.report()
        ious = []
        for record in records:
            masks = predicted[Path(record["file_name"]).name]
            for annotation in record["annotations"]:
                read = _annotation_mask(annotation, record["height"], record["width"])
                ious.append(max(_iou(read, m) for m in masks))
        assert len(ious) == sum(len(m) for m in predicted.values()) - skipped
        assert ious and np.mean(ious) >= 0.95, (fmt, np.mean(ious))


def test_unknown_output_format_and_polygons_of_a_video_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script("tools/predict.py").parse_args(["--config-file", "x.yaml", "--input", "a.png", "--output-format", "yolo"])
    error = capsys.readouterr().err
    assert "invalid choice: 'yolo'" in error and "'labelme', 'cvat', 'geojson'" in error
    predictor = SimpleNamespace(input_format="BGR")
    with pytest.raises(ValueError, match=r"output formats must be some of \['coco', 'labelme', 'cvat', 'geojson'\]"):
        predict(predictor, Metadata(thing_classes=["a"]), [tmp_path], tmp_path / "out", output_formats=["shp"])
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (32, 32))
    writer.write(np.zeros((32, 32, 3), np.uint8))
    writer.release()
    with pytest.raises(ValueError, match=r"clip.avi: output formats \['labelme'\] are written for images"):
        predict(predictor, Metadata(thing_classes=["a"]), [video], tmp_path / "out", output_formats=["coco", "labelme"])


class _FixedPredictor:
    """Stands in for BatchPredictor: the same instances for every image."""

    input_format = "BGR"

    def __init__(self, instances: Instances) -> None:
        self.instances = instances

    def predict_batch(self, images: list[np.ndarray]) -> list[dict]:
        return [{"instances": self.instances} for _ in images]


def _fixed_instances(**fields) -> Instances:
    instances = Instances((HEIGHT, WIDTH))
    instances.pred_boxes = Boxes(torch.tensor([[16.0, 10.0, 45.0, 39.0]]))
    instances.scores = torch.tensor([0.75])
    instances.pred_classes = torch.tensor([0])
    for name, value in fields.items():
        instances.set(name, value)
    return instances


def test_tiled_rle_masks_become_polygons_and_box_only_models_are_refused(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    metadata = Metadata(thing_classes=CLASSES)
    rle_masks = RLEMasks([mask_to_rle(HARD_SHAPES["ring"])])
    summary = predict(_FixedPredictor(_fixed_instances(pred_masks_rle=rle_masks)), metadata, [tmp_path / "a.png"],
                      tmp_path / "out", output_formats=["labelme"], polygon_tolerance=0)  # fmt: skip
    assert summary.predictions_json is None and set(summary.outputs) == {"labelme"}
    records, _, _ = _load("tiled_rle", "labelme", tmp_path, tmp_path / "out" / "labelme")
    assert np.array_equal(_annotation_mask(records[0]["annotations"][0], HEIGHT, WIDTH), HARD_SHAPES["ring"])
    with pytest.raises(ValueError, match=r"output formats \['geojson'\] need masks; this model predicts boxes only"):
        predict(_FixedPredictor(_fixed_instances()), metadata, [tmp_path / "a.png"], tmp_path / "o2", output_formats=["geojson"])
