"""Problems found in a dataset: what they are, how severe, and how they are reported.

Loaders and the scanner never raise on the first bad entry and never drop anything silently: every
problem is recorded here with the file, the record and what is wrong. Registration then stops on fatal
problems (``DatasetError``), and logs counts plus first examples of everything that was dropped or kept.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from enum import Enum

logger = logging.getLogger(__name__)


class Severity(Enum):
    FATAL = "fatal"  # registration stops
    DROPPED = "dropped"  # the offending part is dropped, counted and logged
    KEPT = "kept"  # reported only; the data is used as is


@dataclass(frozen=True)
class ProblemKind:
    severity: Severity
    description: str


PROBLEM_KINDS: dict[str, ProblemKind] = {
    "malformed": ProblemKind(Severity.FATAL, "file or entry cannot be parsed or has the wrong structure"),
    "missing_image": ProblemKind(Severity.FATAL, "image file does not exist"),
    "unreadable_image": ProblemKind(Severity.FATAL, "image cannot be decoded or is refused as a decompression bomb"),
    "size_mismatch": ProblemKind(Severity.FATAL, "image size differs from the annotation's"),
    "path_outside_root": ProblemKind(Severity.FATAL, "path in an annotation file points outside the dataset root"),
    "unknown_category": ProblemKind(Severity.FATAL, "category is not in the class list"),
    "duplicate_id": ProblemKind(Severity.FATAL, "image id, annotation id or image file used twice"),
    "unclear_instance_class": ProblemKind(
        Severity.FATAL, "instance whose class-map pixels are mostly background (0) or tie between classes"
    ),
    "degenerate_polygon": ProblemKind(Severity.DROPPED, "polygon with fewer than 3 points (instance dropped if none is left)"),
    "zero_area_box": ProblemKind(Severity.DROPPED, "box or mask with zero area (instance dropped)"),
    "missing_segmentation": ProblemKind(Severity.DROPPED, "instance without a mask in a dataset with masks (dropped)"),
    "unsupported_shape": ProblemKind(
        Severity.DROPPED, "shape without area (LabelMe point/line/linestrip, CVAT polyline/points/tag) or labelled _background_ (skipped)"
    ),
    "small_component": ProblemKind(Severity.DROPPED, "connected component under min_component_area (dropped)"),
    "missing_mask": ProblemKind(Severity.DROPPED, "image without its label map or class map (image skipped)"),
    "mixed_instance_class": ProblemKind(Severity.KEPT, "instance whose pixels carry several classes (the most frequent is used)"),
    "polygon_outside_image": ProblemKind(Severity.KEPT, "polygon points outside the image (clipped when rasterized)"),
    "mostly_crowd": ProblemKind(Severity.KEPT, "most instances are crowd (iscrowd 1), so training ignores them"),
    "empty_label_map": ProblemKind(Severity.KEPT, "label map that is all background (0): the image has no instances"),
    "no_annotations": ProblemKind(Severity.KEPT, "image without annotations (DATALOADER.FILTER_EMPTY_ANNOTATIONS decides)"),
}


@dataclass(frozen=True)
class Problem:
    kind: str
    file: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}, {self.where}: {self.detail}" if self.where else f"{self.file}: {self.detail}"


class DatasetError(ValueError):
    """Fatal problems in a dataset; the message names the file, the record and the problem."""


class ProblemLog:
    """Counts problems per kind and keeps the first ``max_examples`` of each."""

    def __init__(self, dataset: str, max_examples: int = 5) -> None:
        self.dataset = dataset
        self.max_examples = max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[Problem]] = {}

    def add(self, kind: str, file: str | os.PathLike, where: str, detail: str) -> None:
        if kind not in PROBLEM_KINDS:
            raise KeyError(f"unknown problem kind {kind!r}; known: {sorted(PROBLEM_KINDS)}")
        self.counts[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < self.max_examples:
            examples.append(Problem(kind, os.fspath(file), where, detail))

    def count(self, severity: Severity) -> int:
        return sum(n for kind, n in self.counts.items() if PROBLEM_KINDS[kind].severity is severity)

    def report(self, severities: tuple[Severity, ...] = tuple(Severity)) -> str:
        """Multi-line text: per kind, its count, what it means and the first examples."""
        lines = []
        for kind, spec in PROBLEM_KINDS.items():
            if self.counts[kind] and spec.severity in severities:
                lines.append(f"  {kind} ({spec.severity.value}) x{self.counts[kind]}: {spec.description}")
                lines.extend(f"    - {example}" for example in self.examples[kind])
                if self.counts[kind] > len(self.examples[kind]):
                    lines.append(f"    ... and {self.counts[kind] - len(self.examples[kind])} more")
        return "\n".join(lines)

    def raise_if_fatal(self) -> None:
        fatal = self.count(Severity.FATAL)
        if fatal:
            raise DatasetError(
                f"dataset '{self.dataset}': {fatal} fatal problem(s); fix the data (or run "
                f"tools/validate_dataset.py for a full report):\n{self.report((Severity.FATAL,))}"
            )

    def log_summary(self) -> None:
        """Log every non-fatal problem kind with its count and first examples (nothing is silent)."""
        for severity, level in ((Severity.DROPPED, logging.WARNING), (Severity.KEPT, logging.INFO)):
            if self.count(severity):
                logger.log(level, "dataset '%s': %s problems:\n%s", self.dataset, severity.value, self.report((severity,)))
