"""The command line shared by the training tools: Detectron2's arguments, then ``launch`` in each process."""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Callable

from detectron2.engine import default_argument_parser, launch


def launch_from_command_line(main: Callable[[Namespace], object]) -> None:
    """Parse Detectron2's standard arguments and run ``main(args)`` in every process ``launch`` starts."""
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
