#!/usr/bin/env python
"""Train or evaluate a model from a LazyConfig Python file, with Detectron2's command line and the plugin's
training parts (d2_maskext/engine/lazy_training.py).

    python tools/lazyconfig_train_net.py --config-file configs/lazy/synthetic/mask_rcnn_R18_FPN_GN_demo.py
    python tools/lazyconfig_train_net.py --config-file ... --eval-only train.init_checkpoint=output/x.pth
    python tools/lazyconfig_train_net.py --config-file ... --num-gpus 2 train.max_iter=1000
"""

from __future__ import annotations

from argparse import Namespace

from d2_maskext.cli import setup_lazy_config
from d2_maskext.cli.launching import launch_from_command_line
from d2_maskext.engine.lazy_training import lazy_evaluate, lazy_train


def main(args: Namespace) -> dict | None:
    cfg = setup_lazy_config(args)
    if args.eval_only:
        return lazy_evaluate(cfg, resume=args.resume)
    lazy_train(cfg, resume=args.resume)
    return None


if __name__ == "__main__":
    launch_from_command_line(main)
