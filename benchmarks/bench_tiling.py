"""Tiled inference on large scenes: mask AP, wall time and peak RSS of the plugin's tiling against the
per-image ceiling, the stock downscaled prediction and SAHI, with the same trained demo model, in one run.

The scenes are mosaics of the synthetic val split (``mosaic_scene``: 8 x 8 images of 256 px = 2048 px, objects
at native size). Every row runs in its own subprocess (its peak RSS read from ``wait4``) and is evaluated on
the same mosaic ground truth with pycocotools (``coco_metrics``), up to ``--max-dets`` detections per scene:

  * per-image (ceiling): ``DefaultPredictor`` on each 256 px val image, results moved into mosaic pixels;
  * downscaled: ``DefaultPredictor`` (stock) on the whole mosaic, resized to INPUT.MIN/MAX_SIZE_TEST;
  * whole mosaic, native size: the whole mosaic as one tile at native size (nothing cut or merged, masks as RLE),
    proposal and detection caps scaled with the area: what the model finds in the mosaic itself, seams between
    unrelated images included (the reference for what tiling loses by cutting and merging);
  * SAHI default: ``get_sliced_prediction`` of ``sahi.models.detectron2.Detectron2DetectionModel`` with its
    defaults (a full-image pass added; with the model's 0.05 score threshold SAHI switches itself to NMS/IoU);
  * SAHI GREEDYNMM/IOS: the same, with its greedy merge forced (``force_postprocess_type``);
  * plugin tiling: ``DefaultPredictor`` with ``MODEL.MASKEXT.TILING`` (masks as RLE);
  * plugin tiling, fast settings: the same with ``MODEL.MASKEXT.PRECISION bfloat16`` + ``CHANNELS_LAST`` (docs/speed.md);
  * 16k scene: the plugin on one 16,384 x 16,384 mosaic (uint8 tensor, ``model(inputs)``), peak RSS only.

    python benchmarks/bench_tiling.py                  # needs output/demo/model_final.pth
    python benchmarks/bench_tiling.py --scene-size 0   # without the 16k scene

SAHI is not a dependency of the project; install it without its OpenCV pin (benchmarks/requirements-bench.txt):
    pip install --no-deps sahi==0.12.8 && pip install -r benchmarks/requirements-bench.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pycocotools.mask as mask_util
import torch
from machine import run_header

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "synthetic" / "mask_rcnn_R18_FPN_GN_demo.yaml"
WEIGHTS = REPO / "output" / "demo" / "model_final.pth"
SAHI_INSTALL = "pip install --no-deps sahi==0.12.8 && pip install -r benchmarks/requirements-bench.txt"
ROWS = (
    "per-image (ceiling)", "downscaled (stock)", "whole mosaic, native size", "SAHI default", "SAHI GREEDYNMM/IOS", "plugin tiling",
    "plugin tiling, fast settings",
)
FAST_OPTS = ("MODEL.MASKEXT.PRECISION", "bfloat16", "MODEL.MASKEXT.CHANNELS_LAST", True)


# ------------------------------------------------------------------------------------------- children
def _cfg(args: argparse.Namespace, *opts):
    from detectron2.config import get_cfg

    from d2_maskext.config import add_maskext_config

    cfg = add_maskext_config(get_cfg())
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(["MODEL.WEIGHTS", str(args.weights), "MODEL.DEVICE", "cpu", *opts])
    return cfg


def _tiling_opts(args: argparse.Namespace, max_detections: int, tile: int, tile_resize: int = 0) -> list:
    return [
        "INPUT.MIN_SIZE_TEST", 0, "MODEL.MASKEXT.TILING.SIZE", tile, "MODEL.MASKEXT.TILING.OVERLAP", args.overlap,
        "MODEL.MASKEXT.TILING.MIN_SIZE_TEST", tile_resize, "MODEL.MASKEXT.TILING.MAX_SIZE_TEST", tile_resize,
        "MODEL.MASKEXT.TILING.RLE_OUTPUT", True, "MODEL.MASKEXT.TILING.MAX_DETECTIONS", max_detections,
    ]


def _result(image_id: int, category: int, score: float, rle: dict, box: list[float]) -> dict:
    x0, y0, x1, y1 = box
    return {"image_id": image_id, "category_id": category + 1, "score": score, "segmentation": rle, "bbox": [x0, y0, x1 - x0, y1 - y0]}


def _instances_results(instances, image_id: int, offset: tuple[int, int] = (0, 0), size: tuple[int, int] | None = None) -> list[dict]:
    """COCO results of ``instances`` (bit masks or RLEs), moved by ``offset`` into an image of ``size``."""
    from d2_maskext.modeling.tiling import RLE_FIELD, crop_to_rle
    from d2_maskext.utils.rle import mask_to_rle

    boxes = instances.pred_boxes.tensor.tolist()
    out = []
    for i, (score, category) in enumerate(zip(instances.scores.tolist(), instances.pred_classes.tolist())):
        if instances.has(RLE_FIELD):
            rle = instances.get(RLE_FIELD)[i]
        elif size is not None:
            rle = crop_to_rle(instances.pred_masks[i].numpy(), offset[0], offset[1], *size)
        else:
            rle = mask_to_rle(instances.pred_masks[i].numpy())
        box = [boxes[i][0] + offset[0], boxes[i][1] + offset[1], boxes[i][2] + offset[0], boxes[i][3] + offset[1]]
        out.append(_result(image_id, category, score, rle, box))
    return out


def _predict_mosaics(predictor, args: argparse.Namespace, coco: dict) -> list[dict]:
    """COCO results of ``predictor`` on each whole mosaic image of the ground truth ``coco``."""
    import cv2

    results = []
    for image in coco["images"]:
        instances = predictor(cv2.imread(str(Path(args.gt).parent / "images" / image["file_name"])))["instances"]
        results += _instances_results(instances, image["id"])
    return results


def run_row(args: argparse.Namespace) -> None:
    """One row, in this (child) process: writes its COCO results and inference wall time to ``args.out``."""
    import cv2
    from detectron2.engine import DefaultPredictor

    import d2_maskext  # noqa: F401 (registers MaskExtRCNN)
    from d2_maskext.data.synthetic import BUILTIN_SYNTHETIC, ensure_generated, mosaic_scene

    spec = BUILTIN_SYNTHETIC["maskext_synth_val"]
    coco = json.loads(Path(args.gt).read_text())
    results: list[dict] = []
    extra: dict = {}
    if args.row == "16k scene":
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.modeling import build_model

        cells = args.scene_size // spec.image_size
        scene, _ = mosaic_scene(spec, (cells, cells), with_annotations=False)
        model = build_model(_cfg(args, *_tiling_opts(args, 10**6, args.scene_tile or args.tile, args.scene_tile_resize))).eval()
        DetectionCheckpointer(model).load(str(args.weights))
        start = time.perf_counter()
        with torch.no_grad():
            instances = model([{"image": torch.from_numpy(scene).permute(2, 0, 1)}])[0]["instances"]
        extra = {"detections": len(instances), "scene_bytes": scene.nbytes}
    elif args.row == "per-image (ceiling)":
        predictor = DefaultPredictor(_cfg(args))
        image_root = ensure_generated(spec).parent / "images"
        grid = coco["info"]["grid"]
        start = time.perf_counter()
        for image in coco["images"]:
            for cell in range(grid[0] * grid[1]):
                index = image["id"] * grid[0] * grid[1] + cell
                offset = ((cell % grid[1]) * spec.image_size, (cell // grid[1]) * spec.image_size)
                instances = predictor(cv2.imread(str(image_root / f"{index:06d}.png")))["instances"]
                results += _instances_results(instances, image["id"], offset, (image["height"], image["width"]))
    elif args.row == "downscaled (stock)":
        predictor = DefaultPredictor(_cfg(args))
        start = time.perf_counter()
        results = _predict_mosaics(predictor, args, coco)
    elif args.row == "whole mosaic, native size":
        # One tile as large as the mosaic: nothing is cut or merged, and masks stay compact (RLE) where full-image
        # masks of 3,200 detections would take 13 GB.
        grid = coco["info"]["grid"]
        rpn = _cfg(args).MODEL.RPN
        caps = {key: rpn[key] * grid[0] * grid[1] for key in ("PRE_NMS_TOPK_TEST", "POST_NMS_TOPK_TEST")}
        predictor = DefaultPredictor(_cfg(
            args, *_tiling_opts(args, args.max_dets, max(grid) * spec.image_size), "TEST.DETECTIONS_PER_IMAGE",
            args.max_dets, *(item for key, value in caps.items() for item in (f"MODEL.RPN.{key}", value)),
        ))
        start = time.perf_counter()
        results = _predict_mosaics(predictor, args, coco)
    elif args.row.startswith("plugin tiling"):
        fast = FAST_OPTS if args.row == "plugin tiling, fast settings" else ()
        predictor = DefaultPredictor(_cfg(args, *_tiling_opts(args, args.max_dets, args.tile), *fast))
        start = time.perf_counter()
        results = _predict_mosaics(predictor, args, coco)
    elif args.row == "merge ablation":
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.modeling import build_model

        model = build_model(_cfg(args, *_tiling_opts(args, args.max_dets, args.tile))).eval()
        DetectionCheckpointer(model).load(str(args.weights))
        start = time.perf_counter()
        extra = {"variants": _merge_ablation(args, model, coco)}
    else:
        results, start = _sahi_row(args, coco)
    wall = time.perf_counter() - start
    Path(args.out).write_text(json.dumps({"results": results, "wall_s": wall, **extra}))


MERGE_VARIANTS = (
    "plugin merge (IOS, whole view kept, cut duplicates dropped)",
    "IoU instead of IOS",
    "union of every member's mask",
    "cut views of whole objects kept",
    "no merge (every tile's detections)",
)


def _merge_ablation(args: argparse.Namespace, model, coco: dict) -> dict[str, list[dict]]:
    """COCO results of each merge variant, from one set of tile detections per mosaic (the network runs once)."""
    import dataclasses

    import cv2

    from d2_maskext.modeling import tiling

    settings = model.tiling
    detections = {}
    with torch.no_grad():
        for image in coco["images"]:
            bgr = cv2.imread(str(Path(args.gt).parent / "images" / image["file_name"]))
            tensor = torch.from_numpy(bgr).permute(2, 0, 1)
            detections[image["id"]] = tiling.detect_scene(model, tensor, (image["height"], image["width"]), settings)

    def union(members):
        x0, y0, mask = tiling._union(members)
        box = tiling._mask_box(x0, y0, mask) or members[0].box
        return dataclasses.replace(members[0], box=box, x0=x0, y0=y0, mask=mask)

    def keep_all(dets, metric, threshold, cell):
        return [[d] for d in dets]

    patches = {
        MERGE_VARIANTS[0]: ({}, settings),
        MERGE_VARIANTS[1]: ({}, dataclasses.replace(settings, merge_metric="iou")),
        MERGE_VARIANTS[2]: ({"resolve_object": union}, settings),
        MERGE_VARIANTS[3]: ({"_seen_whole_elsewhere": lambda *a: False}, settings),
        MERGE_VARIANTS[4]: ({"merge_detections": keep_all}, settings),
    }
    out = {}
    for name, (patch, variant_settings) in patches.items():
        saved = {k: getattr(tiling, k) for k in patch}
        for k, v in patch.items():
            setattr(tiling, k, v)
        try:
            out[name] = []
            for image in coco["images"]:
                objects = tiling.merge_scene(detections[image["id"]], variant_settings, settings.stride)
                for o in objects:
                    rle = tiling.crop_to_rle(o.mask, o.x0, o.y0, image["height"], image["width"])
                    out[name].append(_result(image["id"], o.category, o.score, rle, list(o.box)))
        finally:
            for k, v in saved.items():
                setattr(tiling, k, v)
    return out


def _sahi_row(args: argparse.Namespace, coco: dict) -> tuple[list[dict], float]:
    try:
        from sahi.models.detectron2 import Detectron2DetectionModel
        from sahi.predict import get_sliced_prediction
    except ImportError as e:
        raise SystemExit(f"SAHI is not installed ({e}); install it with: {SAHI_INSTALL}") from e
    config = Path(args.out).with_suffix(".yaml")
    config.write_text(_cfg(args).dump())  # every key, for SAHI's get_cfg() + merge_from_file
    model = Detectron2DetectionModel(
        model_path=str(args.weights), config_path=str(config), device="cpu", confidence_threshold=0.05,
        image_size=args.tile, category_mapping={str(i): str(i) for i in range(5)},
    )
    forced = args.row == "SAHI GREEDYNMM/IOS"
    results = []
    start = time.perf_counter()
    for image in coco["images"]:
        prediction = get_sliced_prediction(
            str(Path(args.gt).parent / "images" / image["file_name"]), model, slice_height=args.tile,
            slice_width=args.tile, overlap_height_ratio=args.overlap, overlap_width_ratio=args.overlap, verbose=0,
            postprocess_type="GREEDYNMM", postprocess_match_metric="IOS", force_postprocess_type=forced,
        )
        height, width = image["height"], image["width"]
        for p in (p.get_shifted_object_prediction() for p in prediction.object_prediction_list):
            polygons = [s for s in p.mask.segmentation if len(s) >= 6]
            if not polygons:
                continue
            rle = mask_util.merge(mask_util.frPyObjects(polygons, height, width))
            rle["counts"] = rle["counts"].decode("ascii")
            results.append(_result(image["id"], p.category.id, float(p.score.value), rle, list(p.bbox.to_xyxy())))
    return results, start


# --------------------------------------------------------------------------------------------- parent
def _spawn(args: argparse.Namespace, row: str, out: Path, gt: Path) -> tuple[dict, float]:
    """Run ``row`` in a subprocess; return its output and its own peak RSS in GiB (``wait4``'s ``ru_maxrss``)."""
    command = [
        sys.executable, __file__, "--row", row, "--out", str(out), "--gt", str(gt), "--weights", str(args.weights),
        "--tile", str(args.tile), "--overlap", str(args.overlap), "--max-dets", str(args.max_dets),
        "--scene-size", str(args.scene_size), "--scene-tile", str(args.scene_tile),
        "--scene-tile-resize", str(args.scene_tile_resize),
    ]
    proc = subprocess.Popen(command, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"row {row!r} failed (exit {proc.returncode})")
    return json.loads(out.read_text()), usage.ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--grid", type=int, default=8, help="val images per mosaic side (8: 2048 px mosaics)")
    parser.add_argument("--tile", type=int, default=512, help="tile / slice side in pixels")
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--max-dets", type=int, default=3200, help="detections per mosaic scored (64 images x 50)")
    parser.add_argument("--scene-size", type=int, default=16384, help="side of the peak-RSS scene (0: skip it)")
    parser.add_argument("--scene-tile", type=int, default=0, help="tile side on that scene (0: --tile)")
    parser.add_argument("--scene-tile-resize", type=int, default=0, help="each scene tile resized to this side (0: as cut)")
    parser.add_argument("--merge-ablation", action="store_true", help="also score merge variants on the same tiles")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=ROWS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--gt", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        run_row(args)
        return
    if not args.weights.is_file():
        raise SystemExit(f"{args.weights}: trained demo model not found (python tools/demo.py trains it)")
    if any(r.startswith("SAHI") for r in args.rows):
        try:
            import sahi  # noqa: F401
        except ImportError:
            raise SystemExit(f"SAHI rows need SAHI: {SAHI_INSTALL}") from None

    from d2_maskext.data.synthetic import BUILTIN_SYNTHETIC, ensure_mosaics
    from d2_maskext.evaluation.coco_metrics import evaluate_coco_results, load_coco_json

    gt = ensure_mosaics(BUILTIN_SYNTHETIC["maskext_synth_val"], (args.grid, args.grid))
    coco_gt = load_coco_json(gt)
    side = args.grid * BUILTIN_SYNTHETIC["maskext_synth_val"].image_size
    print(run_header())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(coco_gt.imgs)} mosaics of {side} px "
        f"({len(coco_gt.anns)} objects), tile {args.tile}, overlap {args.overlap}, up to {args.max_dets} detections per mosaic"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in args.rows:
            out, rss = _spawn(args, row, Path(tmp) / f"{len(rows)}.json", gt)
            metrics = {
                task: evaluate_coco_results(coco_gt, out["results"], task, args.max_dets).summary_metrics()["AP"]
                for task in ("segm", "bbox")
            }
            rows.append((row, metrics["segm"], metrics["bbox"], out["wall_s"], rss))
            print(f"  {row}: mask AP {metrics['segm']:.1f}, {out['wall_s']:.1f} s, {rss:.2f} GiB", flush=True)
        ablation = _spawn(args, "merge ablation", Path(tmp) / "ablation.json", gt)[0] if args.merge_ablation else None
        scene = None
        if args.scene_size:
            scene, scene_rss = _spawn(args, "16k scene", Path(tmp) / "scene.json", gt)
    names = [r[0] for r in rows]
    ceiling = rows[names.index("per-image (ceiling)")][1] if "per-image (ceiling)" in names else float("nan")
    sahi = rows[names.index("SAHI default")][3] if "SAHI default" in names else float("nan")
    print("\n| row | mask AP | box AP | mask AP / ceiling | wall s | wall / SAHI default | peak RSS GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, mask_ap, box_ap, wall, rss in rows:
        print(f"| {name} | {mask_ap:.1f} | {box_ap:.1f} | {mask_ap / ceiling:.0%} | {wall:.1f} | {wall / sahi:.2f}x | {rss:.2f} |")
    if ablation is not None:
        print("\n| merge variant (same tile detections) | mask AP | box AP |")
        print("|---|---:|---:|")
        for name, results in ablation["variants"].items():
            ap = {t: evaluate_coco_results(coco_gt, results, t, args.max_dets).summary_metrics()["AP"] for t in ("segm", "bbox")}
            print(f"| {name} | {ap['segm']:.1f} | {ap['bbox']:.1f} |")
    if scene is not None:
        print(
            f"\n{args.scene_size} x {args.scene_size} scene ({scene['scene_bytes'] / 2**30:.2f} GiB uint8 image, tiles of "
            f"{args.scene_tile or args.tile} px run at {args.scene_tile_resize or 'native size'}): "
            f"{scene['detections']} objects in {scene['wall_s']:.0f} s, peak RSS {scene_rss:.2f} GiB"
        )


if __name__ == "__main__":
    main()
