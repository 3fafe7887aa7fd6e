"""Notices files the test suite creates in the checkout's own data folders (it must use temporary ones)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


class CheckoutGuard:
    """Remembers what ``folders`` (folder under ``root`` -> how many levels to look into) hold when created.

    Only names are compared, not contents: runs outside the suite (a demo training writing into
    ``output/demo``) may change files that already exist.
    """

    def __init__(self, root: Path, folders: Mapping[str, int]) -> None:
        self.root = root
        self.folders = dict(folders)
        self.before = self._entries()

    def _entries(self) -> set[str]:
        entries: set[str] = set()
        for name, depth in self.folders.items():
            level = [self.root / name]
            for _ in range(depth):
                level = [child for folder in level if folder.is_dir() for child in folder.iterdir()]
                entries.update(path.relative_to(self.root).as_posix() for path in level)
        return entries

    def new_entries(self) -> list[str]:
        """Paths that appeared since construction."""
        return sorted(self._entries() - self.before)
