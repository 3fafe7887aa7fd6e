#!/usr/bin/env python
"""Train or evaluate a Mask R-CNN with d2_maskext components, using Detectron2's standard CLI.

    python tools/train_net.py --config-file configs/synthetic/mask_rcnn_R18_FPN_GN_demo.yaml
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file ... --num-gpus 2      # 2 processes (gloo on CPU, NCCL on GPUs)
"""

from __future__ import annotations

from argparse import Namespace

from detectron2.evaluation import verify_results

from d2_maskext.cli import setup_cfg
from d2_maskext.cli.launching import launch_from_command_line
from d2_maskext.engine import Trainer


def main(args: Namespace):
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        Trainer.build_checkpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    launch_from_command_line(main)
