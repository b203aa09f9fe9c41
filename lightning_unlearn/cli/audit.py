"""``lightning-unlearn audit RESULT``: re-verify a deletion's audit record against its files.

Exit status 0 when every hash matches (the model before and after, the ledger, the forget ids),
1 with a one-line report of the mismatches otherwise, 2 for a missing or unreadable result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lightning_unlearn.cli._args import add_common
from lightning_unlearn.cli.common import read_forget_ids
from lightning_unlearn.errors import CheckpointError
from lightning_unlearn.unlearning.audit import verify_audit
from lightning_unlearn.unlearning.result import UnlearningResult

__all__ = ["build_parser", "run"]


def build_parser(prog: str = "lightning-unlearn audit") -> argparse.ArgumentParser:
    """The ``audit`` command's parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Re-verify the audit record in an `unlearn` result.json: the model hashes "
        "before and after, the ledger checksum and the forget ids. Exit 0 if all match, 1 if not.",
    )
    parser.add_argument("result", help="result.json written by `lightning-unlearn unlearn`")
    parser.add_argument(
        "--forget-ids", default=None, help="also compare with these ids (file or inline list)"
    )
    add_common(parser)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``audit``; raises AuditMismatchError (exit 1) on any mismatch."""
    path = Path(args.result)
    if not path.is_file():
        raise CheckpointError(f"The result file {str(path)!r} does not exist.")
    try:
        result = UnlearningResult.from_json(path)
    except ValueError as err:
        raise CheckpointError(f"{str(path)!r} is not an unlearning result: {err}") from None
    ids = None if args.forget_ids is None else read_forget_ids(args.forget_ids)
    verified = verify_audit(result.audit, forget_ids=ids)
    report = {"result": str(path), "ok": True, "verified": verified}
    print(json.dumps(report, indent=2))
    return report
