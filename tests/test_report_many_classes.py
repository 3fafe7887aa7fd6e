"""The evaluation report with many classes: ranked selections in the figures, complete numbers in the table
and in metrics.json, Boundary AP still reported.

The split is synthetic (rectangles on small images) with a known quality per class and a few classes that
are systematically predicted as another one, so rankings and confused pairs are predictable.
"""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_report import coco_result

from d2_maskext.evaluation.coco_metrics import evaluate_coco_results, load_coco_json
from d2_maskext.evaluation.confusion import ConfusionMatrix
from d2_maskext.evaluation.plots import pr_curve_figure
from d2_maskext.evaluation.report import ReportOptions, write_report_from_files
from d2_maskext.evaluation.report import metric_sections as report

IMAGE_SIZE = 64
INSTANCES_PER_CLASS = 3
NUM_WORST = 2


def write_many_class_split(num_classes: int, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write images, COCO ground truth and predictions for ``num_classes`` classes into ``folder``.

    Four rectangles per image; each class has a skill in [0, 1] that bounds how far its predictions are
    shifted and sets how often they are missed and their score. Every eighth class is predicted as its neighbor
    half the time. Returns (predictions JSON, ground-truth JSON).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(num_classes), INSTANCES_PER_CLASS)
    rng.shuffle(labels)
    skill = rng.uniform(0.0, 1.0, num_classes)
    half = IMAGE_SIZE // 2
    images, annotations, results = [], [], []
    for img_id in range(math.ceil(len(labels) / 4)):
        file_name = f"{img_id:04d}.png"
        canvas = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 235, np.uint8)
        images.append({"id": img_id, "file_name": file_name, "height": IMAGE_SIZE, "width": IMAGE_SIZE})
        for quadrant, label in enumerate(labels[4 * img_id : 4 * img_id + 4]):
            w, h = (int(v) for v in rng.integers(12, half - 4, size=2))
            x = quadrant % 2 * half + int(rng.integers(1, half - w))
            y = quadrant // 2 * half + int(rng.integers(1, half - h))
            color = tuple(int(c) for c in rng.integers(0, 200, size=3))
            cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), color, thickness=-1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img_id,
                    "category_id": int(label) + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                }
            )
            if rng.uniform() < 0.4 * (1 - skill[label]):
                continue  # missed
            shift = int(rng.integers(0, round((1 - skill[label]) * 9) + 1))
            predicted = label
            if label % 8 == 0 and rng.uniform() < 0.5:
                predicted = (label + 1) % num_classes
            mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
            mask[y + shift : y + h, x + shift : x + w] = 1
            score = float(np.clip(skill[label] + rng.normal(0, 0.1), 0.05, 1.0))
            results.append(coco_result(img_id, int(predicted) + 1, mask, score))
        spurious = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        spurious[2:10, 2:10] = 1
        results.append(
            coco_result(img_id, int(rng.integers(1, num_classes + 1)), spurious, float(rng.uniform(0, 0.6)))
        )
        cv2.imwrite(str(folder / file_name), canvas)
    categories = [{"id": k + 1, "name": f"class {k:03d}"} for k in range(num_classes)]
    gt_json, predictions_json = folder / "ground_truth.json", folder / "predictions.json"
    gt_json.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    predictions_json.write_text(json.dumps(results))
    return predictions_json, gt_json


class _ReportStructure(HTMLParser):
    """Images (by alt text) and tables (rows of cell texts) of each ``<section>``, keyed by its heading."""

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, list[str]] = {}
        self.tables: dict[str, list[list[list[str]]]] = {}
        self.sortable_tables = 0
        self.scripts = 0
        self._section = ""
        self._in_h2 = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._in_h2 = tag == "h2"
        if tag == "img":
            self.images.setdefault(self._section, []).append(attrs["alt"])
        elif tag == "table":
            self.tables.setdefault(self._section, []).append([])
            self.sortable_tables += attrs.get("class") == "sortable"
        elif tag == "tr":
            self.tables[self._section][-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "script":
            assert "src" not in attrs, "the report must not load scripts"
            self.scripts += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._section][-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._in_h2:
            self._section = data
            self._in_h2 = False
        if self._cell is not None:
            self._cell.append(data)


def _structure(report_html: Path) -> _ReportStructure:
    parser = _ReportStructure()
    parser.feed(report_html.read_text(encoding="utf-8"))
    parser.close()
    return parser


@pytest.fixture(scope="module")
def many_class_report(tmp_path_factory) -> tuple[Path, int]:
    """(output folder of a report on 40 classes, number of classes)."""
    num_classes = 40
    folder = tmp_path_factory.mktemp("many_classes")
    predictions, gt = write_many_class_split(num_classes, folder / "data")
    write_report_from_files(
        predictions, gt, folder / "report", options=ReportOptions(num_worst_images=NUM_WORST)
    )
    return folder, num_classes


def test_many_classes_report_ranks_and_selects(many_class_report):
    folder, num_classes = many_class_report
    out = folder / "report"
    metrics = json.loads((out / "metrics.json").read_text())
    html = _structure(out / "report.html")

    # metrics.json keeps every class, for every task including Boundary AP, and the full matrix.
    for task in ("bbox", "segm", "boundary"):
        assert len(metrics[task]["per_class_AP"]) == num_classes
    assert len(metrics["confusion_matrix"]["labels"]) == num_classes + 1
    assert np.asarray(metrics["confusion_matrix"]["counts"]).shape == (num_classes + 1, num_classes + 1)

    # Per-class table: every class, ranked by mask AP, worst first.
    (per_class,) = html.tables["Per-class AP"]
    header, *rows = per_class
    assert header[:2] == ["rank", "class"] and "boundary AP" in header
    assert [r[0] for r in rows] == [str(k) for k in range(1, num_classes + 1)]
    mask_ap = [metrics["segm"]["per_class_AP"][r[1]] for r in rows]
    assert mask_ap == sorted(mask_ap)

    # PR curves: one figure per task (box, mask, boundary), each naming the worst and best 5 classes.
    pr_alts = html.images["Precision-recall curves"]
    assert len(pr_alts) == 3 and any(alt.startswith("PR curves boundary,") for alt in pr_alts)
    for alt in pr_alts:
        worst, best = (set(m.split(", ")) for m in re.findall(r"classes: ([^;]*)", alt))
        assert len(worst) == len(best) == report.PR_CURVE_CLASSES and not worst & best, alt

    # Confusion matrix of the most confused classes, then the ranked pairs: exactly the systematic confusions
    # (every eighth class predicted as the next one), since the rectangles of an image do not overlap.
    assert html.images["Confusion matrix"] == ["confusion matrix of the 12 most confused classes"]
    pairs_header, *pairs = html.tables["Confusion matrix"][0]
    assert pairs_header[1:4] == ["ground truth", "predicted as", "instances"]
    counts = [int(p[3]) for p in pairs]
    assert 0 < len(pairs) <= report.CONFUSED_PAIRS and counts == sorted(counts, reverse=True)
    for _, gt_name, dt_name, *_ in pairs:
        gt_class, dt_class = int(gt_name.split()[1]), int(dt_name.split()[1])
        assert gt_class % 8 == 0 and dt_class == gt_class + 1

    # Every figure is still there: per-class chart, 3 PR figures, confusion, sweep, worst images twice.
    assert sum(len(v) for v in html.images.values()) == 1 + 3 + 1 + 1 + 2 * NUM_WORST
    assert html.sortable_tables == 2 and html.scripts == 1


def test_pr_figure_draws_only_the_selected_classes(many_class_report):
    folder, _ = many_class_report
    coco_gt = load_coco_json(folder / "data" / "ground_truth.json")
    results = json.loads((folder / "data" / "predictions.json").read_text())
    evaluation = evaluate_coco_results(coco_gt, results, "segm")

    fig = pr_curve_figure(
        evaluation, 0.5, {"5 worst classes": [0, 1, 2, 3, 4], "5 best classes": [5, 6, 7, 8, 9]}
    )

    worst, best, mean = fig.axes
    assert [len(ax.get_legend().get_texts()) for ax in (worst, best, mean)] == [5, 5, 3]
    assert worst.get_legend().get_texts()[0].get_text().startswith("class 000 (AP50 ")


def test_few_classes_keep_every_class_in_the_figures(tmp_path):
    predictions, gt = write_many_class_split(report.MANY_CLASSES, tmp_path / "data")
    out = tmp_path / "report"
    write_report_from_files(predictions, gt, out, options=ReportOptions(num_worst_images=0))
    html = _structure(out / "report.html")

    assert html.images["Per-class AP"] == ["per-class AP"]
    assert html.images["Confusion matrix"] == ["confusion matrix"]
    assert "Confusion matrix" not in html.tables  # no list of confused pairs
    (per_class,) = html.tables["Per-class AP"]
    assert [r[0] for r in per_class[1:]] == [f"class {k:03d}" for k in range(report.MANY_CLASSES)]


def test_confusion_restriction_and_ranked_pairs():
    # ground truth rows A, B, C, background; predicted columns A, B, C, background
    counts = np.array([[5, 3, 0, 1], [1, 4, 0, 0], [0, 0, 6, 2], [0, 1, 4, 0]])
    confusion = ConfusionMatrix(["A", "B", "C"], counts)

    assert confusion.top_confused_pairs(5) == [(0, 1, 3), (1, 0, 1)]
    # A and B confuse each other (4 each); C only misses and is spurious, so it ranks last.
    assert confusion.most_confused_classes(2) == [0, 1]
    restricted = confusion.restricted([1, 2])
    assert restricted.labels == ["B", "C", "background"]
    np.testing.assert_array_equal(restricted.counts, [[4, 0, 0], [0, 6, 2], [1, 4, 0]])
