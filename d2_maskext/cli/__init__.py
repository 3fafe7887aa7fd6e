"""What the command-line tools share: reading a YAML or lazy config with overrides, setting up a training
run from the command line, launching it in every process, and model analysis.

The layer above ``engine``: it may import the trainer; nothing else in the package imports it.
"""

from .training_setup import setup_cfg, setup_lazy_config

__all__ = ["setup_cfg", "setup_lazy_config"]
