"""``lightning-unlearn demo``: :func:`~lightning_unlearn.experiments.demo.run_demo` on the
command line.

The options are the function's parameters (``--epochs 2 --methods [sgld] --progress false``);
``--config examples/configs/demo.yaml`` reads them from YAML and ``--print_config`` prints them.
"""

from __future__ import annotations

from lightning_unlearn.cli._typed import run_function
from lightning_unlearn.experiments.demo import run_demo

__all__ = ["run"]


def run(argv: list[str]) -> None:
    """Run the demo with the options in ``argv`` (outputs in ``outputs/demo`` by default)."""
    run_function(
        run_demo, argv, prog="lightning-unlearn demo", defaults={"output_dir": "outputs/demo"}
    )
