"""The ``lightning-unlearn`` command: ``fit``, ``unlearn``, ``audit``, ``evaluate``, ``demo``,
``reproduce``.

Run ``lightning-unlearn <command> --help`` for each command's options. Every command accepts
``--config file.yaml`` (see ``examples/configs/``).
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, str] = {
    "fit": "train a classifier with the per-instance privacy monitor (checkpoint + ledger)",
    "unlearn": "unlearn a forget set with a budget from its privacy losses (checkpoint + JSON)",
    "audit": "re-verify the audit record of an `unlearn` result against its files",
    "evaluate": "measure forgetting: losses, accuracy, MIA AUROC, vs. an oracle, loss barrier",
    "demo": "the whole story on scikit-learn's digits in about a minute (report + plots)",
    "reproduce": "the paper's experiment on Fashion-MNIST (steps-to-unlearn, barriers, scores)",
    "reference": "train K reference models on random halves (per-example OUT targets; resumable)",
}


def _usage() -> str:
    lines = [
        "usage: lightning-unlearn <command> [options]   (lightning-unlearn <command> --help)",
        "",
        "Per-instance privacy losses and calibrated unlearning for PyTorch Lightning.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-unlearn`` console script.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 when ``audit`` finds a mismatch, 2 on a usage error
        or a clear, expected error (bad values, missing, wrong or corrupt files, bad ids, a
        failed write), printed as one line without a traceback.
    """
    import torch

    from lightning_unlearn import __version__
    from lightning_unlearn.cli._args import parse_args
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
    module = importlib.import_module(f"lightning_unlearn.cli.{name}")
    # a module without `build_parser` is a typed function's wrapper: it parses its own argv
    parser = (
        module.build_parser(prog=f"lightning-unlearn {name}")
        if hasattr(module, "build_parser")
        else None
    )
    try:
        namespace: Any = args[1:]
        if parser is not None:
            namespace = parse_args(parser, args[1:])
            namespace.argv = args[1:]
            if namespace.threads is not None and namespace.threads > 0:
                torch.set_num_threads(namespace.threads)
        with warnings.catch_warnings():
            # Lightning's advice for multi-core data loading does not apply to in-memory tensors.
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*Full backward hook is firing.*")
            module.run(namespace)
    except SystemExit as err:  # argparse errors and --help
        return int(err.code) if isinstance(err.code, int) else 2
    except ImportError as err:
        if "pip install" not in str(err):  # a missing optional extra says how to install it
            raise
        print(f"lightning-unlearn {name}: error: {err}", file=sys.stderr)
        return 2
    except AuditMismatchError as err:
        print(f"lightning-unlearn {name}: {err}", file=sys.stderr)
        return 1
    except (LightningUnlearnError, OSError) as err:  # OSError: a file that cannot be read/written
        print(f"lightning-unlearn {name}: error: {err}", file=sys.stderr)
        return 2
    return 0
