"""Commands that are typed Python functions: ``jsonargparse`` builds their options from the
signature (names, types, defaults) and the docstring (help), so the command line and the Python
API cannot disagree.

``--config file.yaml`` reads the options from YAML (keys are the parameter names),
``--print_config`` prints the full YAML (which ``--config`` accepts) and exits. Types are
checked by ``jsonargparse`` (exit status 2); ranges and choices by the function itself
(:class:`~lightning_unlearn.errors.InvalidArgumentError`, exit status 2 from the dispatcher).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from lightning_unlearn.validation import check_int

__all__ = ["function_parser", "run_function"]


def function_parser(
    function: Callable[..., Any], *, prog: str, defaults: Mapping[str, Any] | None = None
) -> ArgumentParser:
    """The parser of ``function``'s keyword options, plus ``--config`` and ``--threads``.

    Args:
        function: the typed function; its ``command`` parameter (how the run was started) is
            filled in by :func:`run_function`, not an option.
        prog: the program name shown in the usage line.
        defaults: command-line defaults for parameters that have none in Python.

    Returns:
        The parser.
    """
    doc = inspect.getdoc(function) or ""
    parser = ArgumentParser(prog=prog, description=doc.split("\n\n")[0], default_env=False)
    parser.add_argument(
        "--config",
        action=ActionConfigFile,
        help="YAML file of option values (keys are the option names, e.g. `epochs: 10`); "
        "options after it on the command line override it. See examples/configs/.",
    )
    parser.add_function_arguments(function, as_positional=False, skip={"command"})
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default); these small models run fastest on one, "
        "and more threads than idle cores slow every step down many times over",
    )
    if defaults:
        parser.set_defaults(**defaults)
    return parser


def run_function(
    function: Callable[..., Any],
    argv: list[str],
    *,
    prog: str,
    defaults: Mapping[str, Any] | None = None,
) -> Any:
    """Parse ``argv`` for ``function`` and call it.

    Raises:
        SystemExit: ``--help``, ``--print_config`` (status 0) or a parse error (status 2).
        InvalidArgumentError: ``--threads`` below 0, or a value ``function`` refuses.
    """
    import torch

    parser = function_parser(function, prog=prog, defaults=defaults)
    kwargs = parser.parse_args(argv).as_dict()
    kwargs.pop("config", None)
    threads = check_int("threads", kwargs.pop("threads"), minimum=0)
    if threads > 0:
        torch.set_num_threads(threads)
    return function(**kwargs, command=" ".join([prog, *argv]))
