"""An audit record per deletion request, and its re-verification against the files.

The record (``UnlearningResult.audit``, in ``result.json``) names what was deleted and from
which state: the forget ids (all of them up to :data:`LARGE_FORGET_SET`, beyond that their count
and hash), the SHA-256 of the ledger the budget came from (its own checksum), the SHA-256 of the
model's weights before and after (:func:`~lightning_unlearn.integrity.tensors_sha256`), the
budget and its source, the steps taken, the stop reason, and the versions of Python and of the
libraries. :func:`verify_audit` recomputes every hash from the files the record names.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.errors import AuditMismatchError, LightningUnlearnError
from lightning_unlearn.integrity import tensors_sha256
from lightning_unlearn.validation import check_forget_ids

__all__ = [
    "AUDIT_VERSION",
    "LARGE_FORGET_SET",
    "audit_record",
    "checkpoint_weights_sha256",
    "forget_ids_record",
    "library_versions",
    "verify_audit",
]

AUDIT_VERSION = 1
LARGE_FORGET_SET = 10_000
"""Forget sets larger than this are recorded by count and hash only."""


def forget_ids_record(ids: Sequence[int] | torch.Tensor) -> dict[str, Any]:
    """``{"count", "sha256", "ids"}`` of a forget set (``ids`` omitted for large sets).

    The hash is SHA-256 of the sorted ids as little-endian int64 bytes, so it does not depend on
    the order in which they were given. A hash of what it is given: the ids are not validated
    (a recorded list is hashed as written; requests are checked by
    :func:`~lightning_unlearn.validation.check_forget_ids` before they get here).

    Example:
        >>> r = forget_ids_record([5, 1])
        >>> r["count"], r["ids"], r["sha256"] == forget_ids_record([1, 5])["sha256"]
        (2, [1, 5], True)
    """
    t = torch.as_tensor(ids, dtype=torch.long).flatten().sort().values
    digest = hashlib.sha256(t.numpy().astype("<i8").tobytes()).hexdigest()
    record: dict[str, Any] = {"count": int(t.numel()), "sha256": digest}
    if t.numel() <= LARGE_FORGET_SET:
        record["ids"] = t.tolist()
    return record


def library_versions() -> dict[str, str]:
    """Versions of Python, lightning_unlearn, torch, lightning, opacus and numpy."""
    out = {"python": platform.python_version()}
    for name in ("lightning_unlearn", "torch", "lightning", "opacus", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    if out["lightning_unlearn"] == "not installed":  # run from a source tree
        from lightning_unlearn import __version__

        out["lightning_unlearn"] = __version__
    return out


def _ledger_sha256(ledger: PrivacyLedger) -> str:
    checksum: str = ledger.state_dict()["checksum"]
    return checksum


def audit_record(
    *,
    forget_ids: Sequence[int] | torch.Tensor,
    ledger: PrivacyLedger | None,
    model_before: nn.Module,
    model_after: nn.Module,
    budget: int,
    budget_source: str,
    steps: int,
    stop_reason: str,
    files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The audit record of one deletion request (stored as ``UnlearningResult.audit``).

    Args:
        forget_ids: the ids deleted (checked by
            :func:`~lightning_unlearn.validation.check_forget_ids`).
        ledger: the ledger the budget was computed from (None for a fixed budget without one).
        model_before: the trained model.
        model_after: the unlearned model.
        budget: the step budget.
        budget_source: where it came from (e.g. ``"THEORY §5 constants"``).
        steps: the steps taken.
        stop_reason: why the run stopped.
        files: ``{"checkpoint", "ledger", "unlearned_checkpoint"}`` paths, for
            :func:`verify_audit`.

    Returns:
        A JSON-able dict.
    """
    return {
        "version": AUDIT_VERSION,
        "forget_ids": forget_ids_record(check_forget_ids(forget_ids)),
        "ledger_sha256": None if ledger is None else _ledger_sha256(ledger),
        "model_sha256_before": tensors_sha256(model_before),
        "model_sha256_after": tensors_sha256(model_after),
        "budget": int(budget),
        "budget_source": budget_source,
        "steps": int(steps),
        "stop_reason": stop_reason,
        "versions": library_versions(),
        "files": {k: str(Path(v).resolve()) for k, v in (files or {}).items()},
    }


def checkpoint_weights_sha256(path: str | Path) -> str:
    """:func:`~lightning_unlearn.integrity.tensors_sha256` of a checkpoint's ``state_dict``.

    Reads Lightning-style checkpoints (a dict with ``"state_dict"``) with
    ``torch.load(..., weights_only=True)``.

    Raises:
        AuditMismatchError: the file is missing, unreadable or has no ``state_dict``.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        state = data["state_dict"]
    except FileNotFoundError:
        raise AuditMismatchError(f"{str(path)!r} named in the audit record is missing.") from None
    except Exception as err:
        raise AuditMismatchError(
            f"{str(path)!r} named in the audit record cannot be read as a checkpoint "
            f"({type(err).__name__}: {err})."
        ) from None
    return tensors_sha256(state)


def _check(mismatches: list[str], what: str, recorded: Any, actual: Any) -> None:
    if recorded != actual:
        mismatches.append(f"{what}: recorded {str(recorded)[:16]}..., found {str(actual)[:16]}...")


def verify_audit(
    audit: dict[str, Any],
    *,
    forget_ids: Sequence[int] | torch.Tensor | None = None,
) -> list[str]:
    """Re-verify an audit record against the files it names.

    Checks the model hashes of ``files["checkpoint"]`` (before) and
    ``files["unlearned_checkpoint"]`` (after), the ledger's checksum (loading it verifies the
    file, then its checksum must equal the recorded one), the forget-id hash against the
    recorded ids, and, when given, against ``forget_ids``.

    Args:
        audit: the record (``UnlearningResult.audit``).
        forget_ids: the ids of the deletion request, to compare with the record.

    Returns:
        What was verified, one line each.

    Raises:
        AuditMismatchError: anything differs or is missing; the message lists every mismatch.
    """
    if not audit or audit.get("version") != AUDIT_VERSION:
        raise AuditMismatchError(
            f"Expected an audit record of version {AUDIT_VERSION}, but got "
            f"{audit.get('version') if audit else 'none'}; re-run `unlearn` with this version."
        )
    files, mismatches, ok = audit.get("files", {}), [], []
    for key, name in (("checkpoint", "before"), ("unlearned_checkpoint", "after")):
        if key not in files:
            mismatches.append(f"no {key} file recorded")
            continue
        try:
            actual = checkpoint_weights_sha256(files[key])
        except AuditMismatchError as err:
            mismatches.append(str(err))
            continue
        _check(
            mismatches, f"model hash {name} ({files[key]})", audit[f"model_sha256_{name}"], actual
        )
        ok.append(f"model {name}: {actual}")
    if audit.get("ledger_sha256") is not None:
        try:
            ledger = PrivacyLedger.load(files["ledger"], map_location="cpu")
            _check(mismatches, "ledger checksum", audit["ledger_sha256"], _ledger_sha256(ledger))
            ok.append(f"ledger: {audit['ledger_sha256']}")
        except (KeyError, FileNotFoundError, LightningUnlearnError) as err:
            mismatches.append(f"ledger: {err}")
    record = audit["forget_ids"]
    if "ids" in record:
        _check(
            mismatches,
            "forget-id hash",
            record["sha256"],
            forget_ids_record(record["ids"])["sha256"],
        )
    if forget_ids is not None:
        request = forget_ids_record(check_forget_ids(forget_ids))  # the request's ids enter here
        _check(mismatches, "forget ids", record["sha256"], request["sha256"])
    ok.append(f"forget ids: {record['count']} ({record['sha256']})")
    if mismatches:
        raise AuditMismatchError("audit mismatch: " + "; ".join(mismatches))
    return ok
