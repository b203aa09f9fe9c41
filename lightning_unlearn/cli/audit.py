"""``lightning-unlearn audit RESULT``: re-verify a deletion's audit record against its files.

Exit status 0 when every hash matches (the model before and after, the ledger, the forget ids),
1 with a one-line report of the mismatches otherwise, 2 for a missing or unreadable result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonargparse import CLI

from lightning_unlearn.data.forget_ids import read_forget_ids
from lightning_unlearn.errors import CheckpointError
from lightning_unlearn.unlearning.audit import verify_audit
from lightning_unlearn.unlearning.result import UnlearningResult

__all__ = ["audit", "run"]


def audit(result: str, forget_ids: str | None = None) -> dict[str, Any]:
    """Re-verify the audit record in an `unlearn` result.json: the model hashes before and
    after, the ledger checksum and the forget ids. Exit 0 if all match, 1 if not.

    Args:
        result: ``result.json`` written by ``lightning-unlearn unlearn``.
        forget_ids: also compare with these ids (a file or an inline list).
    """
    path = Path(result)
    if not path.is_file():
        raise CheckpointError(f"The result file {str(path)!r} does not exist.")
    try:
        record = UnlearningResult.from_json(path)
    except ValueError as err:
        raise CheckpointError(f"{str(path)!r} is not an unlearning result: {err}") from None
    ids = None if forget_ids is None else read_forget_ids(forget_ids)
    verified = verify_audit(record.audit, forget_ids=ids)
    report = {"result": str(path), "ok": True, "verified": verified}
    print(json.dumps(report, indent=2))
    return report


def run(argv: list[str]) -> None:
    """``lightning-unlearn audit ARGS``."""
    CLI(audit, args=argv, prog="lightning-unlearn audit", exit_on_error=False)
