"""Running count of training images a mapper could not read and skipped.

Each data-loader worker holds its own mapper copy, so counts are per worker and every log line says which.
A run of consecutive failures means a wrong image root or a broken disk rather than a few bad files, so it
stops training with a clear error instead of letting Detectron2's loader retry forever.
"""

from __future__ import annotations

import logging

from torch.utils.data import get_worker_info

logger = logging.getLogger(__name__)


class BadImageCounter:
    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self.files: set[str] = set()

    def skip(self, file_name: str, error: Exception) -> None:
        """Count and log one skipped image; raise once ``max_consecutive`` images in a row failed (if > 0)."""
        self.skipped += 1
        self.consecutive += 1
        self.files.add(file_name)
        worker = get_worker_info()
        where = f"data-loader worker {worker.id}" if worker is not None else "the main process"
        logger.warning(
            "skipping training image: %s -- %d skip(s) of %d distinct image(s) so far in %s",
            error,
            self.skipped,
            len(self.files),
            where,
        )
        if 0 < self.max_consecutive <= self.consecutive:
            raise RuntimeError(
                f"{self.consecutive} training images in a row could not be read (last: {error}); the image root "
                "or the disk is probably wrong (limit: INPUT.MAPPER.MAX_CONSECUTIVE_BAD_IMAGES)"
            )

    def succeed(self) -> None:
        self.consecutive = 0
