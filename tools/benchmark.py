#!/usr/bin/env python
"""Speed of a config's training step, inference or data loading. Detectron2's ``tools/benchmark.py`` with
YAML and LazyConfig files and the plugin's training parts (mapper, CPU mixed precision).

    python tools/benchmark.py --config-file configs/synthetic/mask_rcnn_R18_FPN_GN_demo.yaml --task train
    python tools/benchmark.py --config-file configs/lazy/synthetic/mask_rcnn_R18_FPN_GN_demo.py --task eval
    python tools/benchmark.py --config-file configs/synthetic/mapper_copy_paste.yaml --task data

``train`` and ``eval`` repeat a few batches read up front, so the model alone is timed; ``data`` times
the training loader alone. The first ``--warmup`` iterations are left out of the figures.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from argparse import Namespace
from collections.abc import Callable, Iterable

import torch
from detectron2.config import instantiate
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger

from d2_maskext.cli.config_loading import LoadedConfig, load_config
from d2_maskext.engine.trainer import training_loop_class
from d2_maskext.modeling.precision import amp_enabled

TASKS = ("train", "eval", "data")
logger = logging.getLogger("d2_maskext.benchmark")


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML or LazyConfig .py file")
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--max-iter", type=int, default=100, help="timed iterations (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=5, help="iterations run before timing starts")
    parser.add_argument("--num-batches", type=int, default=4, help="batches read up front for train and eval")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides: 'KEY VALUE' pairs (YAML) or 'key=value' items (lazy configs)")  # fmt: skip
    return parser.parse_args(argv)


def _optimizer(config: LoadedConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.is_lazy:
        config.config.optimizer.params.model = model
        return instantiate(config.config.optimizer)
    return build_optimizer(config.config, model)


def time_iterations(step: Callable[[], object], warmup: int, max_iter: int) -> float:
    """Seconds per call of ``step`` over ``max_iter`` calls, after ``warmup`` untimed ones."""
    if max_iter < 1 or warmup < 0:
        raise ValueError(f"need --max-iter >= 1 and --warmup >= 0, got {max_iter} and {warmup}")
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(max_iter):
        step()
    return (time.perf_counter() - start) / max_iter


def _cycle(batches: Iterable[list[dict]], count: int) -> Iterable[list[dict]]:
    kept = list(itertools.islice(batches, count))
    if not kept:
        raise ValueError("the data loader yielded no batch")
    return itertools.cycle(kept)


def benchmark_train(config: LoadedConfig, args: Namespace) -> float:
    model = config.build_model().train()
    data = _cycle(config.build_train_loader(), args.num_batches)
    loop = training_loop_class(amp_enabled(config.config), model)(model, data, _optimizer(config, model))
    with EventStorage() as loop.storage:  # the loop logs its losses there
        return time_iterations(loop.run_step, args.warmup, args.max_iter)


def benchmark_eval(config: LoadedConfig, args: Namespace) -> float:
    model = config.build_model()
    if config.weights:
        config.load_weights(model)
    batches = iter(_cycle(config.build_test_loader(), args.num_batches))

    def step() -> None:
        with torch.no_grad():
            model(next(batches))

    return time_iterations(step, args.warmup, args.max_iter)


def benchmark_data(config: LoadedConfig, args: Namespace) -> float:
    batches = iter(config.build_train_loader())
    return time_iterations(lambda: next(batches), args.warmup, args.max_iter)


BENCHMARKS: dict[str, Callable[[LoadedConfig, Namespace], float]] = {
    "train": benchmark_train,
    "eval": benchmark_eval,
    "data": benchmark_data,
}


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    setup_logger(name="d2_maskext")
    config = load_config(args.config_file, args.opts)
    seconds = BENCHMARKS[args.task](config, args)
    print(f"{args.task}: {seconds:.4f} s/iter ({1 / seconds:.2f} iter/s) over {args.max_iter} iterations")
    return seconds


if __name__ == "__main__":
    main()
