"""``lightning-unlearn reproduce``: :func:`~lightning_unlearn.experiments.reproduce.run_reproduce`
on the command line.

The options are the function's parameters (``--scale 0.05 --seeds 1``); ``--config
examples/configs/reproduce.yaml`` reads them from YAML and ``--print_config`` prints them.
"""

from __future__ import annotations

from lightning_unlearn.cli._typed import run_function
from lightning_unlearn.experiments.reproduce import run_reproduce

__all__ = ["run"]


def run(argv: list[str]) -> None:
    """Run the experiment with the options in ``argv`` (outputs in ``outputs/reproduce`` by
    default)."""
    run_function(
        run_reproduce,
        argv,
        prog="lightning-unlearn reproduce",
        defaults={"output_dir": "outputs/reproduce"},
    )
