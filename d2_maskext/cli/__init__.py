"""What the command-line tools share: reading a YAML or lazy config with overrides, setting up a training
run from the command line, launching it in every process, and model analysis.

The top layer, above ``engine``: it may import the trainer; no other part of the package imports it (the
package's own ``d2_maskext.setup_cfg`` is loaded from here on first use).
"""

from .training_setup import setup_cfg, setup_lazy_config

__all__ = ["setup_cfg", "setup_lazy_config"]
