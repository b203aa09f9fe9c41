"""PrivacyLedger: updates against a loop, save/load, mismatches, merging, CSV, bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import lightning_unlearn
from lightning_unlearn.accounting import (
    DEFAULT_ALPHAS,
    LEDGER_FORMAT_VERSION,
    PrivacyLedger,
    per_step_rdp,
    rdp_to_epsilon,
)
from lightning_unlearn.errors import LedgerMismatchError, UnsupportedOrderError

N = 50
ALPHAS = (2, 4, 8, 32)


def _batches(num: int = 12, batch: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        ids = torch.randint(0, N, (batch,), generator=gen)  # duplicates on purpose
        norms = torch.rand(batch, generator=gen, dtype=torch.float64) * 3
        rdp = per_step_rdp(norms, 0.3, ALPHAS) / 0.3
        out.append((ids, rdp, norms))
    return out


def _filled(batches: list[tuple[torch.Tensor, ...]], **kwargs: object) -> PrivacyLedger:
    ledger = PrivacyLedger(N, ALPHAS, **kwargs)  # type: ignore[arg-type]
    for ids, rdp, norms in batches:
        ledger.update(ids, rdp, norms)
    return ledger


def test_top_level_reexport() -> None:
    assert lightning_unlearn.PrivacyLedger is PrivacyLedger


def test_update_matches_a_python_loop_with_duplicates() -> None:
    batches = _batches()
    ledger = _filled(batches)
    privacy = [[0.0] * len(ALPHAS) for _ in range(N)]
    counts, sq = [0] * N, [0.0] * N
    for ids, rdp, norms in batches:
        for i, row, norm in zip(ids.tolist(), rdp.tolist(), norms.tolist(), strict=True):
            privacy[i] = [p + v for p, v in zip(privacy[i], row, strict=True)]
            counts[i] += 1
            sq[i] += norm * norm
    torch.testing.assert_close(ledger.privacy, torch.tensor(privacy, dtype=torch.float64))
    assert ledger.counts.tolist() == counts
    torch.testing.assert_close(ledger.sq_norm_sum, torch.tensor(sq, dtype=torch.float64))
    assert ledger.privacy.dtype == torch.float64
    assert ledger.counts.dtype == torch.int64
    assert ledger.seen_fraction() == pytest.approx(sum(c > 0 for c in counts) / N)
    torch.testing.assert_close(ledger.privacy_loss(8), ledger.privacy[:, 2])


def test_duplicates_in_one_update_accumulate_and_last_norm() -> None:
    ledger = PrivacyLedger(3, (2,))
    ledger.update(
        torch.tensor([1, 1, 1]), torch.full((3, 1), 0.25, dtype=torch.float64), torch.ones(3)
    )
    assert ledger.privacy[:, 0].tolist() == [0.0, 0.75, 0.0]
    assert ledger.counts.tolist() == [0, 3, 0]
    ledger.update(torch.tensor([0, 2]), torch.zeros(2, 1), torch.tensor([2.0, 5.0]))
    assert ledger.last_norm.tolist() == [2.0, 1.0, 5.0]


def test_epsilon_and_reset() -> None:
    ledger = _filled(_batches())
    eps, best = ledger.epsilon(1e-5)
    ref_eps, ref_best = rdp_to_epsilon(ledger.privacy, ALPHAS, 1e-5)
    assert torch.equal(eps, ref_eps)
    assert torch.equal(best, ref_best)
    ledger.reset()
    assert ledger.privacy.abs().sum() == 0
    assert ledger.counts.sum() == 0
    assert ledger.seen_fraction() == 0.0


def test_save_load_round_trip_is_bit_identical(tmp_path: Path) -> None:
    meta = {"sample_rate": 0.3, "noise_multiplier": 1.0, "dataset": {"name": "digits", "n": N}}
    ledger = _filled(_batches(), convention="dpsgd", metadata=meta)
    path = tmp_path / "sub" / "ledger.pt"
    ledger.save(path)
    loaded = PrivacyLedger.load(path)
    for name in ("privacy", "counts", "sq_norm_sum", "last_norm"):
        assert torch.equal(getattr(loaded, name), getattr(ledger, name)), name
        assert getattr(loaded, name).dtype == getattr(ledger, name).dtype
    assert loaded.metadata == meta
    assert (loaded.num_samples, loaded.alphas, loaded.convention) == (N, ALPHAS, "dpsgd")
    # the file is plain tensors and primitives: it loads with weights_only=True
    state = torch.load(path, weights_only=True)
    assert state["version"] == LEDGER_FORMAT_VERSION
    assert all(t.device.type == "cpu" for t in state.values() if isinstance(t, torch.Tensor))
    # load_state_dict into a matching ledger is also exact
    other = PrivacyLedger(N, ALPHAS, "dpsgd")
    other.load_state_dict(ledger.state_dict())
    assert torch.equal(other.privacy, ledger.privacy)
    assert other.metadata == meta


def test_state_dict_is_a_copy() -> None:
    ledger = _filled(_batches())
    state = ledger.state_dict()
    state["privacy"].zero_()
    assert ledger.privacy.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_samples": N + 1}, "num_samples"),
        ({"alphas": (2, 4, 8)}, "alphas"),
        ({"alphas": DEFAULT_ALPHAS}, "alphas"),
        ({"convention": "sgld"}, "convention"),
    ],
)
def test_loading_into_another_configuration_raises(tmp_path: Path, kwargs: dict, key: str) -> None:
    ledger = _filled(_batches())
    config = {"num_samples": N, "alphas": ALPHAS, "convention": "nominal"} | kwargs
    target = PrivacyLedger(**config)
    with pytest.raises(LedgerMismatchError, match=key) as info:
        target.load_state_dict(ledger.state_dict())
    assert "To recover" in str(info.value)
    assert target.privacy.abs().sum() == 0  # nothing was half-loaded


def test_version_and_malformed_states_raise(tmp_path: Path) -> None:
    ledger = _filled(_batches())
    state = ledger.state_dict()
    state["version"] = LEDGER_FORMAT_VERSION + 1
    with pytest.raises(LedgerMismatchError, match="format version") as info:
        PrivacyLedger(N, ALPHAS).load_state_dict(state)
    assert "Recompute" in str(info.value)
    state = ledger.state_dict()
    state["counts"] = state["counts"].double()
    with pytest.raises(LedgerMismatchError, match="counts"):
        PrivacyLedger(N, ALPHAS).load_state_dict(state)
    with pytest.raises(LedgerMismatchError, match="keys"):
        PrivacyLedger(N, ALPHAS).load_state_dict({"privacy": ledger.privacy})
    bogus = tmp_path / "bogus.pt"
    torch.save({"weights": torch.zeros(2)}, bogus)
    with pytest.raises(LedgerMismatchError, match=r"PrivacyLedger\.save"):
        PrivacyLedger.load(bogus)


def test_two_halves_merged_equal_the_whole() -> None:
    batches = _batches(num=20)
    whole = _filled(batches)
    # split by steps (two processes seeing different batches of the same data set)
    first, second = _filled(batches[:10]), _filled(batches[10:])
    merged = PrivacyLedger.merge([first, second])
    torch.testing.assert_close(merged.privacy, whole.privacy, rtol=1e-14, atol=0)
    torch.testing.assert_close(merged.sq_norm_sum, whole.sq_norm_sum, rtol=1e-14, atol=0)
    assert torch.equal(merged.counts, whole.counts)
    assert bool((merged.last_norm >= first.last_norm).all())
    assert torch.equal(merged.last_norm, torch.maximum(first.last_norm, second.last_norm))
    # split by ids (each example on one rank only): every sum has one non-zero term, so exact
    low = [(i[i < N // 2], r[i < N // 2], n[i < N // 2]) for i, r, n in batches]
    high = [(i[i >= N // 2], r[i >= N // 2], n[i >= N // 2]) for i, r, n in batches]
    merged = _filled(low).merge_(_filled(high))
    for name in ("privacy", "counts", "sq_norm_sum", "last_norm"):
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name
    # merge() does not modify its inputs
    assert torch.equal(first.privacy, _filled(batches[:10]).privacy)


def test_merge_rejects_mismatch_and_empty() -> None:
    with pytest.raises(LedgerMismatchError, match="alphas"):
        PrivacyLedger(N, (2, 4)).merge_(PrivacyLedger(N, (2, 8)))
    with pytest.raises(LedgerMismatchError, match="num_samples"):
        PrivacyLedger.merge([PrivacyLedger(N), PrivacyLedger(N + 1)])
    with pytest.raises(ValueError, match="at least one"):
        PrivacyLedger.merge([])


def test_csv_export(tmp_path: Path) -> None:
    ledger = _filled(_batches())
    path = tmp_path / "ledger.csv"
    ledger.to_csv(path, delta=1e-5)
    with path.open() as f:
        rows = list(csv.reader(f))
    header = ["sample_id", "count", "sq_norm_sum", "last_norm"]
    header += [f"P_{a}" for a in ALPHAS] + ["epsilon", "best_alpha"]
    assert rows[0] == header
    assert len(rows) == N + 1
    eps, best = ledger.epsilon(1e-5)
    for i, row in enumerate(rows[1:]):
        assert int(row[0]) == i
        assert int(row[1]) == ledger.counts[i].item()
        assert float(row[2]) == ledger.sq_norm_sum[i].item()  # 17 digits: exact round trip
        assert float(row[3]) == ledger.last_norm[i].item()
        assert [float(v) for v in row[4:8]] == ledger.privacy[i].tolist()
        assert float(row[8]) == eps[i].item()
        assert int(row[9]) == best[i].item()
    ledger.to_csv(path)
    with path.open() as f:
        assert next(csv.reader(f)) == header[:-2]


def test_bad_inputs_get_named_errors() -> None:
    ledger = PrivacyLedger(10, ALPHAS)
    ids, rdp, norms = torch.tensor([0, 1]), torch.zeros(2, len(ALPHAS)), torch.ones(2)
    with pytest.raises(ValueError, match=r"`rdp` to have shape"):
        ledger.update(ids, torch.zeros(2, 3), norms)
    with pytest.raises(ValueError, match=r"`grad_norms` to have shape"):
        ledger.update(ids, rdp, torch.ones(3))
    with pytest.raises(ValueError, match="1-D integer"):
        ledger.update(ids.float(), rdp, norms)
    with pytest.raises(ValueError, match="1-D integer"):
        ledger.update(ids.view(2, 1), rdp, norms)
    with pytest.raises(ValueError, match=r"in \[0, 10\)"):
        ledger.update(torch.tensor([3, 10]), rdp, norms)
    with pytest.raises(ValueError, match=r"in \[0, 10\)"):
        ledger.update(torch.tensor([-1, 0]), rdp, norms)
    assert ledger.counts.sum() == 0  # rejected updates change nothing
    with pytest.raises(UnsupportedOrderError):
        PrivacyLedger(10, (2, 2.5))
    with pytest.raises(UnsupportedOrderError, match="ledger's orders"):
        ledger.privacy_loss(16)
    with pytest.raises(ValueError, match="`num_samples`"):
        PrivacyLedger(0)
    with pytest.raises(ValueError, match="`convention`"):
        PrivacyLedger(10, convention="dp")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="JSON"):
        PrivacyLedger(10, metadata={"t": torch.zeros(1)})
    # an empty update is fine
    ledger.update(torch.tensor([], dtype=torch.long), torch.zeros(0, len(ALPHAS)), torch.ones(0))
    assert ledger.counts.sum() == 0


def test_device_handling() -> None:
    ledger = PrivacyLedger(5, (2,), device="cpu")
    assert ledger.privacy.device == ledger.device == torch.device("cpu")
    assert ledger.to("cpu") is ledger
    assert "num_samples=5" in repr(ledger)
    # a meta ledger accepts meta inputs (shape-only device): update never reads values back
    meta = PrivacyLedger(5, (2,), device="meta")
    meta.update(
        torch.tensor([0, 4], device="meta"),
        torch.zeros(2, 1, device="meta"),
        torch.zeros(2, device="meta"),
    )
    assert meta.privacy.device.type == "meta"


def test_checksum_covers_tensors_and_metadata_and_format_1_needs_opt_out(tmp_path: Path) -> None:
    from lightning_unlearn.accounting.ledger import ledger_checksum
    from lightning_unlearn.errors import LedgerIntegrityError

    ledger = _filled(_batches(), metadata={"dataset_fingerprint": "abc"})
    state = ledger.state_dict()
    assert state["checksum"] == ledger_checksum(state)
    for edit in ("tensor", "metadata"):
        bad = ledger.state_dict()
        if edit == "tensor":
            bad["privacy"][7, 1] += 1e-9  # one ulp-scale change in one loss
        else:
            del bad["metadata"]["dataset_fingerprint"]
        fresh = PrivacyLedger(N, ALPHAS)
        with pytest.raises(LedgerIntegrityError, match="checksum"):
            fresh.load_state_dict(bad)
    old = ledger.state_dict()
    old["version"] = 1
    del old["checksum"]
    torch.save(old, tmp_path / "v1.pt")
    with pytest.raises(LedgerMismatchError, match="verify=False"):
        PrivacyLedger.load(tmp_path / "v1.pt")
    with pytest.warns(UserWarning, match="without verifying"):
        loaded = PrivacyLedger.load(tmp_path / "v1.pt", verify=False)
    assert torch.equal(loaded.privacy, ledger.privacy)


def test_truncated_ledger_file_is_an_integrity_error(tmp_path: Path) -> None:
    from lightning_unlearn.errors import LedgerIntegrityError

    _filled(_batches()).save(tmp_path / "l.pt")
    data = (tmp_path / "l.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(LedgerIntegrityError, match="truncated or corrupt"):
        PrivacyLedger.load(tmp_path / "cut.pt")


def test_csv_export_memory_does_not_grow_with_n(tmp_path: Path) -> None:
    import tracemalloc

    peaks = []
    for n in (20_000, 80_000):
        ledger = PrivacyLedger(n, ALPHAS)
        ledger.privacy += 1.0
        tracemalloc.start()
        ledger.to_csv(tmp_path / "big.csv", delta=1e-5)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert sum(1 for _ in (tmp_path / "big.csv").open()) == n + 1
    # Chunks of 16384 rows: four times the rows, about the same working memory (the
    # previous one-table export grew linearly: x4).
    assert peaks[1] < 1.5 * peaks[0], peaks
