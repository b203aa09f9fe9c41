"""The ``lightning-unlearn`` command: ``fit``, ``unlearn``, ``evaluate`` (LightningCLI
subcommands), ``audit``, ``reference``, ``calibrate``, ``demo``, ``reproduce`` (typed functions
through jsonargparse).

Run ``lightning-unlearn <command> --help`` for a command's options; every command reads
``--config file.yaml`` and prints one with ``--print_config`` (see ``examples/configs/``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

__all__ = ["COMMANDS", "LIGHTNING_COMMANDS", "main"]

COMMANDS: dict[str, str] = {
    "fit": "train any LightningModule with the per-instance privacy monitor (checkpoint + ledger)",
    "unlearn": "unlearn a forget set with a budget from its privacy losses (checkpoint + JSON)",
    "evaluate": "measure forgetting: losses, accuracy, MIA AUROC, vs. an oracle, loss barrier",
    "audit": "re-verify the audit record of an `unlearn` result against its files",
    "reference": "train K reference models on random halves (per-example OUT targets; resumable)",
    "calibrate": "fit the step budget k = a log P + b from the reference models, with an interval",
    "demo": "the whole story on scikit-learn's digits in one to two minutes (report + plots)",
    "reproduce": "the paper's experiment on Fashion-MNIST (steps-to-unlearn, barriers, scores)",
}
LIGHTNING_COMMANDS = ("fit", "unlearn", "evaluate")
"""Subcommands of :class:`~lightning_unlearn.cli.commands.UnlearnCLI`; every other command
module exposes ``run(argv: list[str]) -> None``."""


def _usage() -> str:
    lines = [
        "usage: lightning-unlearn <command> [options]   (lightning-unlearn <command> --help)",
        "",
        "Per-instance privacy losses and calibrated unlearning for PyTorch Lightning.",
        "",
        "commands:",
    ]
    return "\n".join(lines + [f"  {name:<10} {text}" for name, text in COMMANDS.items()])


def _dispatch(name: str, argv: list[str]) -> None:
    if name in LIGHTNING_COMMANDS:
        importlib.import_module("lightning_unlearn.cli.commands").run([name, *argv])
        return
    module = importlib.import_module(f"lightning_unlearn.cli.{name}")
    module.run(argv)


def _one_line(err: BaseException) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-unlearn`` console script.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when ``audit`` finds a mismatch, 2 for a usage error
        or a clear, expected error (bad values, missing, wrong or corrupt files, bad ids, a
        failed write), printed as one line without a traceback.
    """
    from lightning_unlearn import __version__
    from lightning_unlearn.errors import AuditMismatchError, LightningUnlearnError

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"lightning-unlearn {__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        print(_usage(), file=sys.stderr)
        print(f"\nlightning-unlearn: error: unknown command {name!r}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            # Lightning's advice for multi-core data loading does not apply to in-memory tensors.
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run.*")
            _dispatch(name, args[1:])
    except SystemExit as err:  # --help, --print_config, argparse errors
        return int(err.code) if isinstance(err.code, int) else 2
    except argparse.ArgumentError as err:  # jsonargparse's parse errors (exit_on_error=False)
        print(f"lightning-unlearn {name}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except ImportError as err:
        if "pip install" not in str(err):  # a missing optional extra says how to install it
            raise
        print(f"lightning-unlearn {name}: error: {err}", file=sys.stderr)
        return 2
    except AuditMismatchError as err:
        print(f"lightning-unlearn {name}: {_one_line(err)}", file=sys.stderr)
        return 1
    except (LightningUnlearnError, OSError) as err:  # OSError: a file that cannot be read/written
        print(f"lightning-unlearn {name}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0
