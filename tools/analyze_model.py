#!/usr/bin/env python
"""FLOPs, activations, parameters and structure of a config's model. Detectron2's
``tools/analyze_model.py`` with YAML and LazyConfig files; the fused pooler's RoIAlign is counted.

    python tools/analyze_model.py --config-file configs/synthetic/mask_rcnn_R18_FPN_GN_demo.yaml \\
        --tasks flop parameter -n 5
    python tools/analyze_model.py --config-file configs/lazy/mask_rcnn_R_50_FPN_1x.py --tasks structure

FLOPs and activations are counted by tracing the model on the first ``-n`` images of the config's test
dataset (its weights are loaded when the config names a file; they do not change the counts much).
"""

from __future__ import annotations

import argparse
import itertools
import logging
from argparse import Namespace
from collections import Counter

import numpy as np
import torch
from detectron2.utils.analysis import activation_count_operators
from detectron2.utils.logger import setup_logger
from fvcore.nn import flop_count_table, parameter_count_table
from torch import nn

from d2_maskext.cli.config_loading import LoadedConfig, load_config
from d2_maskext.cli.model_analysis import FlopCountAnalysis

TASKS = ("flop", "activation", "parameter", "structure")
logger = logging.getLogger("d2_maskext.analyze_model")


def parse_args(argv: list[str] | None = None) -> Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="YAML or LazyConfig .py file")
    parser.add_argument("--tasks", choices=TASKS, nargs="+", required=True, help="what to report")
    parser.add_argument("-n", "--num-inputs", type=int, default=100, help="test images for flop and activation")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides: 'KEY VALUE' pairs (YAML) or 'key=value' items (lazy configs)")  # fmt: skip
    return parser.parse_args(argv)


def _model(config: LoadedConfig) -> nn.Module:
    model = config.build_model()
    if config.weights:
        config.load_weights(model)
    return model


def _inputs(config: LoadedConfig, num_inputs: int) -> list[list[dict]]:
    if num_inputs < 1:
        raise ValueError(f"-n must be >= 1, got {num_inputs}")
    return list(itertools.islice(config.build_test_loader(), num_inputs))


def flops(model: nn.Module, inputs: list[list[dict]]) -> dict[str, float]:
    """Mean FLOPs per image for each operator type, with the per-module table of the first input logged."""
    by_operator: Counter = Counter()
    totals = []
    for index, batch in enumerate(inputs):
        analysis = FlopCountAnalysis(model, batch)
        if index > 0:
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        else:
            logger.info("FLOPs of the first input, by module:\n%s", flop_count_table(analysis, max_depth=5))
        by_operator.update(analysis.by_operator())
        totals.append(analysis.total())
    mean = {op: count / len(inputs) for op, count in by_operator.items()}
    logger.info("Mean GFLOPs per operator: %s", {op: round(v / 1e9, 4) for op, v in mean.items()})
    logger.info("Total GFLOPs: %.3f ± %.3f", np.mean(totals) / 1e9, np.std(totals) / 1e9)
    return mean


def activations(model: nn.Module, inputs: list[list[dict]]) -> dict[str, float]:
    """Mean activation count (millions) per image for each operator type."""
    counts: Counter = Counter()
    for batch in inputs:
        counts.update(activation_count_operators(model, batch))
    mean = {op: count / len(inputs) for op, count in counts.items()}
    logger.info("Mean activations (millions) per operator: %s", {op: round(v, 4) for op, v in mean.items()})
    return mean


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    setup_logger(name="d2_maskext")
    setup_logger(name="fvcore")
    config = load_config(args.config_file, args.opts)
    model = _model(config)
    results: dict[str, object] = {}
    if "parameter" in args.tasks:
        results["parameter"] = table = parameter_count_table(model, max_depth=5)
        logger.info("Parameters:\n%s", table)
    if "structure" in args.tasks:
        results["structure"] = str(model)
        logger.info("Structure:\n%s", model)
    if {"flop", "activation"} & set(args.tasks):
        inputs = _inputs(config, args.num_inputs)
        with torch.no_grad():
            if "flop" in args.tasks:
                results["flop"] = flops(model, inputs)
            if "activation" in args.tasks:
                results["activation"] = activations(model, inputs)
    return results


if __name__ == "__main__":
    main()
