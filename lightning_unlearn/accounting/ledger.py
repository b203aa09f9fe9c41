"""PrivacyLedger: the dense per-example table of accumulated privacy losses (THEORY §3).

One row per example id in ``[0, num_samples)``: the Rényi loss ``P(x, alpha)`` for every order,
the number of observations, the sum of squared gradient norms and the last norm seen. Updates are
``index_add_`` scatters on the ledger's device, with no host synchronisation; ledgers of several
processes reduce by sum (``last_norm`` by max).

Saved states carry a SHA-256 ``checksum`` over the configuration, the metadata and the tensors'
bytes; loading verifies it and the plausibility of the values (finite, non-negative, ``P``
non-decreasing in the order), so a corrupted file raises
:class:`~lightning_unlearn.errors.LedgerIntegrityError` instead of yielding wrong budgets.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, get_args

import torch
from torch import Tensor

from lightning_unlearn.accounting._ledger_checks import (
    CONFIG_KEYS,
    TENSORS,
    check_plausible,
    ledger_checksum,
)
from lightning_unlearn.accounting.conventions import Convention
from lightning_unlearn.accounting.conversion import rdp_to_epsilon
from lightning_unlearn.accounting.rdp import DEFAULT_ALPHAS, validate_alphas
from lightning_unlearn.errors import (
    LedgerIntegrityError,
    LedgerMismatchError,
    UnsupportedOrderError,
)
from lightning_unlearn.integrity import atomic_write
from lightning_unlearn.validation import check_int

__all__ = ["LEDGER_FORMAT_VERSION", "PrivacyLedger", "ledger_checksum"]

LEDGER_FORMAT_VERSION = 2
"""Version of ``state_dict``; bumped whenever its layout changes (2: with ``checksum``)."""

_CSV_CHUNK_ROWS = 16384

_TENSORS = TENSORS
_CONFIG_KEYS = CONFIG_KEYS
_KEYS = set(_CONFIG_KEYS) | {t[0] for t in _TENSORS}


def _json_roundtrip(metadata: dict[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"Expected `metadata` to be a dict or None, but got {type(metadata)}.")
    try:
        result: dict[str, Any] = json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"Expected `metadata` to be JSON-serialisable (str, numbers, bools, None, lists, "
            f"dicts with str keys), but it is not: {err}. Convert tensors with `.tolist()`."
        ) from err
    return result


class PrivacyLedger:
    r"""Per-example accumulated Rényi privacy losses ``P(x, alpha)`` (THEORY §3).

    .. math::

        P(x, \alpha) = \sum_t \varepsilon_t(\alpha; x)

    The ledger adds whatever rows the caller passes: with the online estimator of THEORY §3 the
    caller weights each observed step by ``1 / q``, so ``P`` is an *estimate* of the composed
    loss (unbiased under Poisson sampling); with periodic sweeps the weight is the sweep period.

    Attributes:
        privacy: ``[N, K]`` float64, ``P(x, alphas[k])``.
        counts: ``[N]`` int64, number of observations of each example.
        sq_norm_sum: ``[N]`` float64, sum of squared per-sample gradient norms observed.
        last_norm: ``[N]`` float64, the last norm observed (0 if never seen).
        num_samples: ``N``.
        alphas: The sorted integer orders (columns of ``privacy``).
        convention: Noise convention of THEORY §1 the losses were computed under.
        metadata: JSON-able dict describing the run (sample rate, noise multiplier, ...).
        device: Where the tensors live.

    Args:
        num_samples: Number of examples ``N``; ids are in ``[0, N)``.
        alphas: Integer Rényi orders ``>= 2``.
        convention: ``"nominal"``, ``"dpsgd"`` or ``"sgld"`` (THEORY §1).
        device: Device of the tensors (default: torch's default device).
        metadata: JSON-able description of the run, saved with the ledger.

    Raises:
        ValueError: If ``num_samples < 1`` or the convention is unknown.
        UnsupportedOrderError: If an order is not an integer ``>= 2``.
        TypeError: If ``metadata`` is not JSON-serialisable.

    Example:
        >>> ledger = PrivacyLedger(num_samples=3, alphas=(2, 4))
        >>> rdp = torch.tensor([[0.1, 0.3], [0.2, 0.5]], dtype=torch.float64)
        >>> ledger.update(torch.tensor([2, 2]), rdp, torch.tensor([1.0, 2.0]))  # duplicates add
        >>> ledger.privacy_loss(4)
        tensor([0.0000, 0.0000, 0.8000], dtype=torch.float64)
        >>> ledger.counts.tolist(), ledger.sq_norm_sum.tolist()
        ([0, 0, 2], [0.0, 0.0, 5.0])
    """

    privacy: Tensor
    counts: Tensor
    sq_norm_sum: Tensor
    last_norm: Tensor
    num_samples: int
    alphas: tuple[int, ...]
    convention: Convention
    metadata: dict[str, Any]
    device: torch.device

    def __init__(
        self,
        num_samples: int,
        alphas: Iterable[int] = DEFAULT_ALPHAS,
        convention: Convention = "nominal",
        *,
        device: torch.device | str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        check_int("num_samples", num_samples, minimum=1)
        if convention not in get_args(Convention):
            raise ValueError(
                f"Expected `convention` to be one of {get_args(Convention)}, but got "
                f"{convention!r}."
            )
        self.num_samples = int(num_samples)
        self.alphas = validate_alphas(alphas)
        self.convention = convention
        self.metadata = _json_roundtrip(metadata)
        self.device = torch.device(device) if device is not None else torch.get_default_device()
        k = len(self.alphas)
        for name, dtype, has_k in _TENSORS:
            shape = (num_samples, k) if has_k else (num_samples,)
            setattr(self, name, torch.zeros(shape, dtype=dtype, device=self.device))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, alphas={self.alphas}, "
            f"convention={self.convention!r}, device={self.device})"
        )

    # ------------------------------------------------------------------ updates
    def update(self, sample_ids: Tensor, rdp: Tensor, grad_norms: Tensor) -> None:
        """Add one batch of per-example losses (THEORY §3).

        Rows with the same id accumulate (``privacy``, ``counts``, ``sq_norm_sum``); for
        ``last_norm`` one of the duplicates wins (unspecified which). Inputs are moved to the
        ledger's device. Ids on the CPU are range-checked (cheap, no device sync); on an
        accelerator an out-of-range id fails inside the scatter kernel instead.

        Args:
            sample_ids: Integer tensor ``[B]`` of example ids in ``[0, num_samples)``.
            rdp: Tensor ``[B, K]`` of losses to add, already weighted (e.g. by ``1/q``).
            grad_norms: Tensor ``[B]`` of the per-sample gradient norms of this step.

        Raises:
            ValueError: On shape mismatch, non-integer ids or out-of-range ids (CPU ids only).
        """
        ids = torch.as_tensor(sample_ids)
        if ids.ndim != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(
                f"Expected `sample_ids` to be a 1-D integer tensor, but got dtype {ids.dtype} and "
                f"shape {tuple(ids.shape)}."
            )
        b, k = ids.shape[0], len(self.alphas)
        if tuple(rdp.shape) != (b, k):
            raise ValueError(
                f"Expected `rdp` to have shape (len(sample_ids), len(alphas)) = ({b}, {k}), but "
                f"got {tuple(rdp.shape)}."
            )
        if tuple(grad_norms.shape) != (b,):
            raise ValueError(
                f"Expected `grad_norms` to have shape ({b},) like `sample_ids`, but got "
                f"{tuple(grad_norms.shape)}."
            )
        if ids.device.type == "cpu" and b > 0:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.num_samples:
                raise ValueError(
                    f"Expected `sample_ids` in [0, {self.num_samples}), but got values in "
                    f"[{lo}, {hi}]. Ids must be dataset indices (wrap the dataset in "
                    f"IndexedDataset) and the ledger's `num_samples` the dataset size."
                )
        ids = ids.to(device=self.device, dtype=torch.int64, non_blocking=True)
        rdp = rdp.to(device=self.device, dtype=torch.float64, non_blocking=True)
        norms = grad_norms.to(device=self.device, dtype=torch.float64, non_blocking=True)
        self.privacy.index_add_(0, ids, rdp)
        self.counts.index_add_(0, ids, torch.ones_like(ids))
        self.sq_norm_sum.index_add_(0, ids, norms * norms)
        self.last_norm.index_copy_(0, ids, norms)

    def reset(self) -> None:
        """Zero every per-example entry (configuration and metadata are kept)."""
        for name, _, _ in _TENSORS:
            getattr(self, name).zero_()

    # ------------------------------------------------------------------ queries
    def _column(self, alpha: int) -> int:
        try:
            return self.alphas.index(int(alpha))
        except (ValueError, TypeError):
            raise UnsupportedOrderError(
                f"Expected `alpha` to be one of the ledger's orders {self.alphas}, but got "
                f"{alpha!r}; create the ledger with that order in `alphas`."
            ) from None

    def privacy_loss(self, alpha: int) -> Tensor:
        """Accumulated loss ``P(x, alpha)`` of every example (a view, ``[N]`` float64).

        Raises:
            UnsupportedOrderError: If ``alpha`` is not one of the ledger's orders.
        """
        return self.privacy[:, self._column(alpha)]

    def epsilon(self, delta: float) -> tuple[Tensor, Tensor]:
        """Per-example ``(epsilon, best_alpha)`` at ``delta`` (THEORY §4), each ``[N]``."""
        return rdp_to_epsilon(self.privacy, self.alphas, delta)

    def seen_fraction(self) -> float:
        """Fraction of examples observed at least once (synchronises with the device)."""
        return float((self.counts > 0).double().mean().item())

    # ------------------------------------------------------------------ devices
    def to(self, device: torch.device | str) -> PrivacyLedger:
        """Move the tensors to ``device`` in place and return ``self``."""
        self.device = torch.device(device)
        for name, _, _ in _TENSORS:
            setattr(self, name, getattr(self, name).to(self.device))
        return self

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Plain state: CPU tensor copies, primitives, a ``"version"`` and a ``"checksum"`` key."""
        state: dict[str, Any] = {
            "version": LEDGER_FORMAT_VERSION,
            "num_samples": self.num_samples,
            "alphas": list(self.alphas),
            "convention": self.convention,
            "metadata": _json_roundtrip(self.metadata),
        }
        for name, _, _ in _TENSORS:
            state[name] = getattr(self, name).detach().to("cpu", copy=True)
        state["checksum"] = ledger_checksum(state)
        return state

    def _check_config(self, config: dict[str, Any], what: str) -> None:
        checks = (
            ("num_samples", self.num_samples, "a ledger is tied to one data set"),
            ("alphas", list(self.alphas), "losses at other orders cannot be converted"),
            ("convention", self.convention, "losses of another noise convention differ"),
        )
        for key, mine, why in checks:
            if config[key] != mine:
                raise LedgerMismatchError(
                    f"{what} has {key}={config[key]!r}, but this ledger has {key}={mine!r} "
                    f"({why}). To recover: build the ledger with {key}={config[key]!r} (or use "
                    f"`PrivacyLedger.load(path)`, which takes the saved configuration), or start "
                    f"from a fresh ledger / delete the saved state for this new configuration."
                )

    def _check_compatible(self, state: dict[str, Any], what: str, verify: bool = True) -> None:
        if not isinstance(state, dict) or not set(state) >= _KEYS:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise LedgerMismatchError(
                f"Expected {what} to be a PrivacyLedger state with keys {sorted(_KEYS)}, but got "
                f"{got}. Save ledgers with `PrivacyLedger.save` / `state_dict()`."
            )
        old_unchecked = state["version"] == 1 and not verify
        if state["version"] != LEDGER_FORMAT_VERSION and not old_unchecked:
            hint = (
                " Format 1 had no checksum: if you trust the file, load it with "
                "`PrivacyLedger.load(path, verify=False)` and `save` it again."
                if state["version"] == 1
                else ""
            )
            raise LedgerMismatchError(
                f"{what} has ledger format version {state['version']!r}, but this version of "
                f"lightning_unlearn reads version {LEDGER_FORMAT_VERSION}. Recompute the ledger "
                f"with this version (re-run training with the monitor), or load it with the "
                f"lightning_unlearn version that wrote it and export it with `to_csv`.{hint}"
            )
        self._check_config(state, what)
        for name, dtype, has_k in _TENSORS:
            t = state[name]
            shape = (self.num_samples, len(self.alphas)) if has_k else (self.num_samples,)
            if not isinstance(t, Tensor) or tuple(t.shape) != shape or t.dtype != dtype:
                desc = (t.dtype, tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__
                raise LedgerMismatchError(
                    f"{what}: expected `{name}` to be a {dtype} tensor of shape {shape}, but got "
                    f"{desc}. The state is corrupt; recompute the ledger."
                )
        if verify:
            saved = state.get("checksum")
            actual = ledger_checksum(state)
            if saved != actual:
                raise LedgerIntegrityError(
                    f"{what} does not match its checksum (SHA-256 {actual[:12]}... instead of "
                    f"{str(saved)[:12]}...): its values or metadata changed after it was saved "
                    "(flipped bytes, a truncated copy, an edit). Restore the file from a good "
                    "copy or recompute the ledger by re-running training with the monitor."
                )
        else:
            warnings.warn(
                f"{what} is loaded without verifying its checksum (`verify=False`); only its "
                "values' plausibility is checked.",
                UserWarning,
                stacklevel=3,
            )
        check_plausible(state, what, monotone=verify)

    def load_state_dict(self, state_dict: dict[str, Any], *, verify: bool = True) -> None:
        """Load a state from ``state_dict`` after validating it.

        The configuration must match; ``metadata`` is replaced by the saved one. The checksum
        and the values are verified (see :func:`ledger_checksum`).

        Args:
            state_dict: a :meth:`state_dict`.
            verify: check the checksum (and that ``P`` is non-decreasing in the order). With
                False a warning is given; non-finite and negative values are errors regardless.
                Needed for format-1 states, which have no checksum.

        Raises:
            LedgerMismatchError: On another ``num_samples``, orders, convention or format
                version, or malformed tensors; the message says how to recover.
            LedgerIntegrityError: The checksum differs or the values are impossible.
        """
        self._check_compatible(state_dict, "The loaded ledger state", verify)
        for name, _, _ in _TENSORS:
            getattr(self, name).copy_(state_dict[name])
        self.metadata = _json_roundtrip(state_dict["metadata"])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``state_dict`` with ``torch.save``, atomically (readable without pickle).

        The file appears complete or not at all (a temporary file renamed over ``path``) and
        gets the usual mode of new files (``0o666 & ~umask``).
        """
        state = self.state_dict()
        with atomic_write(path) as fh:
            torch.save(state, fh)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        map_location: torch.device | str | None = None,
        *,
        verify: bool = True,
    ) -> PrivacyLedger:
        """Read a ledger written by ``save`` (``torch.load(..., weights_only=True)``).

        Args:
            path: File written by ``save``.
            map_location: Device of the loaded ledger (default: torch's default device).
            verify: verify the checksum (see :meth:`load_state_dict`).

        Raises:
            LedgerMismatchError: If the file is not a ledger of this format version.
            LedgerIntegrityError: If the file cannot be parsed, its checksum differs, or it
                holds impossible values (NaN, inf, negative losses or counts).
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # torch raises many types for damaged zip / pickle data
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LedgerIntegrityError(
                f"The ledger file {str(path)!r} could not be read ({type(err).__name__}: "
                f"{first}); it is truncated or corrupt. Restore it or recompute the ledger."
            ) from None
        if not isinstance(state, dict) or not set(state) >= _KEYS:
            raise LedgerMismatchError(
                f"Expected {str(path)!r} to hold a PrivacyLedger state (keys {sorted(_KEYS)}); "
                f"it does not. Pass a file written by `PrivacyLedger.save`."
            )
        try:
            ledger = cls(
                int(state["num_samples"]),
                state["alphas"],
                state["convention"],
                device=map_location,
                metadata=state["metadata"],
            )
        except (TypeError, ValueError) as err:
            raise LedgerIntegrityError(
                f"The ledger file {str(path)!r} has an impossible configuration ({err}); it is "
                "corrupt. Restore it or recompute the ledger."
            ) from None
        ledger._check_compatible(state, f"The ledger file {str(path)!r}", verify)
        for name, _, _ in _TENSORS:
            getattr(ledger, name).copy_(state[name])
        return ledger

    # ------------------------------------------------------------------ merging
    def merge_(self, other: PrivacyLedger) -> PrivacyLedger:
        """Add ``other`` into this ledger in place (sums; ``last_norm``: max); returns ``self``.

        Raises:
            LedgerMismatchError: If the configurations (``N``, orders, convention) differ.
        """
        config = {
            "num_samples": other.num_samples,
            "alphas": list(other.alphas),
            "convention": other.convention,
        }
        self._check_config(config, "The ledger to merge")
        self.privacy += other.privacy.to(self.device)
        self.counts += other.counts.to(self.device)
        self.sq_norm_sum += other.sq_norm_sum.to(self.device)
        torch.maximum(self.last_norm, other.last_norm.to(self.device), out=self.last_norm)
        return self

    @classmethod
    def merge(cls, ledgers: Sequence[PrivacyLedger]) -> PrivacyLedger:
        """A new ledger holding the sum of ``ledgers`` (metadata of the first).

        Raises:
            ValueError: If ``ledgers`` is empty.
            LedgerMismatchError: If their configurations differ.
        """
        if len(ledgers) == 0:
            raise ValueError("Expected at least one ledger to merge, but got none.")
        first = ledgers[0]
        out = cls(
            first.num_samples,
            first.alphas,
            first.convention,
            device=first.device,
            metadata=first.metadata,
        )
        for ledger in ledgers:
            out.merge_(ledger)
        return out

    # ------------------------------------------------------------------ export
    def to_csv(self, path: str | os.PathLike[str], delta: float | None = None) -> None:
        """Write one row per example, streamed in chunks (bounded memory), atomically.

        Columns: ``sample_id, count, sq_norm_sum, last_norm, P_<alpha>...`` and, when ``delta``
        is given, ``epsilon, best_alpha``. Floats are written with 17 significant digits
        (``%.17g``, which round-trips float64). The rows are formatted ``16384`` at a time into
        a temporary file renamed over ``path`` at the end: an interrupted export leaves the
        previous file intact.
        """
        header = ["sample_id", "count", "sq_norm_sum", "last_norm"]
        header += [f"P_{a}" for a in self.alphas]
        if delta is not None:
            header += ["epsilon", "best_alpha"]
        with atomic_write(path, "w", newline="") as fh:
            fh.write(",".join(header) + "\n")
            for start in range(0, self.num_samples, _CSV_CHUNK_ROWS):
                stop = min(start + _CSV_CHUNK_ROWS, self.num_samples)
                fh.writelines(self._csv_rows(start, stop, delta))

    def _csv_rows(self, start: int, stop: int, delta: float | None) -> Iterator[str]:
        rows = slice(start, stop)
        privacy = self.privacy[rows]
        ints: list[list[int]] = [list(range(start, stop)), self.counts[rows].tolist()]
        floats: list[list[float]] = [
            self.sq_norm_sum[rows].tolist(),
            self.last_norm[rows].tolist(),
            *privacy.T.tolist(),
        ]
        best: list[list[int]] = []
        if delta is not None:
            eps, best_alpha = rdp_to_epsilon(privacy, self.alphas, delta)
            floats.append(eps.tolist())
            best.append(best_alpha.tolist())
        as_float = "{:.17g}".format
        columns = [list(map(str, c)) for c in ints] + [list(map(as_float, c)) for c in floats]
        columns += [list(map(str, c)) for c in best]
        return (",".join(row) + "\n" for row in zip(*columns, strict=True))
