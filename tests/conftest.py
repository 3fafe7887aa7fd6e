"""Shared test setup: generated datasets go to a reusable temp folder unless D2MX_DATASETS is set."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("D2MX_DATASETS", os.path.join(tempfile.gettempdir(), "d2mx_test_datasets"))
os.environ.setdefault("OMP_NUM_THREADS", "2")
