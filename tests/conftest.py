"""Shared test setup.

Generated datasets always go to a reusable cache folder outside the checkout (``$D2MX_TEST_DATASETS``, default
``<tmp>/d2mx_test_datasets``), even when ``D2MX_DATASETS`` names the user's own folder: the suite must leave the
checkout's ``datasets/`` and ``output/`` as it found them, and checks so at the end of the session.
``tests/helpers`` is importable both as the ``helpers`` package and by its modules' own names.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
os.environ["D2MX_DATASETS"] = os.environ.get(
    "D2MX_TEST_DATASETS", os.path.join(tempfile.gettempdir(), "d2mx_test_datasets")
)
# Threads per test process: one worker's share of the cores. pytest-xdist's workers (tools/run_tests.sh runs one
# per core) then compute with one thread each on the 2-core machine instead of two apiece contending for both
# cores (suite 6 min 51 s against 7 min 33 s, AVX2-only EPYC); in one process (``-n 0``) a test gets every core.
# Set unconditionally, also over the value the workers inherit from the controller; ``D2MX_TEST_THREADS`` overrides.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ["OMP_NUM_THREADS"] = os.environ.get(
    "D2MX_TEST_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))
)
# OpenMP threads that wait for work sleep instead of spinning: on a 2-core machine shared with other processes
# (the suite's own subprocesses included) spinning threads made each training step several times slower. Set before
# torch (and its OpenMP runtime) is first imported; subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(TESTS / "helpers"))

from helpers.checkout_guard import CheckoutGuard  # noqa: E402
from helpers.determinism import make_deterministic  # noqa: E402

make_deterministic()
_GUARD = CheckoutGuard(REPO, {"datasets": 2, "output": 1})  # datasets/maskext_synth/<split>


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state, whatever ran before it."""
    make_deterministic()


# Module order for pytest-xdist (``--dist loadscope --no-loadscope-reorder``, tools/run_tests.sh): the longest
# modules start first so the workers finish together, and of the two that need the session's trained tiny model
# (about two minutes to train) one trains it at the start while the other worker takes other modules, and the
# other comes last, when it is built, instead of waiting for it. Seconds measured on a 2-core AMD EPYC.
RUN_FIRST = (
    "test_fast_settings.py",  # trains the tiny model, then ~40 s of tests
    "test_export.py",  # ~80 s, and its AOTInductor class (a scope of its own) ~110 s
    "test_lazy_configs.py",  # ~50 s
    "test_training_loop.py",  # ~50 s
)
RUN_LAST = ("test_export_openvino.py",)  # ~70 s once the trained model is there


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        if name in RUN_FIRST:
            return RUN_FIRST.index(name)
        return len(RUN_FIRST) + (1 if name in RUN_LAST else 0)

    items.sort(key=rank)  # stable: collection order within each module and among the others


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    written = _GUARD.new_entries()
    if written:
        writer = session.config.get_terminal_writer()
        writer.line()
        writer.line("The test suite wrote into the checkout: " + ", ".join(written), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build) -> Path:
    """``build(folder)`` once per test run, also when pytest-xdist's workers all ask for it: the first one builds
    under a file lock in the run's shared temporary folder and the others wait for it and reuse its result."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # shared by the workers of this run
    folder, done = root / name, root / f"{name}.path"
    with FileLock(str(root / f"{name}.lock")):
        if not done.is_file():
            folder.mkdir(exist_ok=True)
            done.write_text(str(build(folder)))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def tiny_random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of the untrained tiny model: enough where a test needs a model that predicts something."""
    from helpers.tiny_models import save_random_tiny

    return _built_once(tmp_path_factory, "tiny_random", save_random_tiny)


@pytest.fixture(scope="session")
def tiny_trained_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of the tiny model trained to detect its objects (top scores 0.3 or more), trained once per run."""
    from helpers.tiny_models import train_tiny

    return _built_once(tmp_path_factory, "tiny_trained", train_tiny)
