"""Reference models: balanced masks, training through Lightning, resumption, statistics, DDP."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.errors import ForgetSetError
from lightning_unlearn.evaluation.functional import MeasurementError
from lightning_unlearn.unlearning.reference import (
    ReferenceModels,
    ReferenceModelsError,
    balanced_membership,
    train_reference_models,
)
from lightning_unlearn.unlearning.reference_stats import ReferenceStatistics
from tests.unlearning._reference_support import NUM, SeenMLP, make_seen_mlp, small_digits

TRAINER = {"max_epochs": 2, "accelerator": "cpu", "devices": 1, "deterministic": True}


@pytest.mark.parametrize(("n", "k"), [(10, 2), (11, 6), (120, 8)])
def test_balanced_membership(n: int, k: int) -> None:
    masks = balanced_membership(n, k, seed=3)
    assert masks.shape == (k, n)
    assert masks.sum(dim=0).tolist() == [k // 2] * n  # every example OUT in exactly k/2
    for pair in range(k // 2):
        assert bool((masks[2 * pair] ^ masks[2 * pair + 1]).all())
        assert int(masks[2 * pair].sum()) == n // 2
    assert torch.equal(masks, balanced_membership(n, k, seed=3))
    assert not torch.equal(masks, balanced_membership(n, k, seed=4))
    with pytest.raises(ReferenceModelsError, match="even"):
        balanced_membership(n, 3)


@pytest.mark.parametrize(("n", "k", "folds"), [(10, 3, 3), (11, 8, 4), (120, 16, 4)])
def test_balanced_membership_with_folds(n: int, k: int, folds: int) -> None:
    masks = balanced_membership(n, k, seed=3, folds=folds)
    assert masks.shape == (k, n)
    assert (~masks).sum(dim=0).tolist() == [k // folds] * n  # OUT in exactly k / folds
    for group in range(k // folds):
        out = ~masks[group * folds : (group + 1) * folds]
        assert out.sum(dim=0).tolist() == [1] * n  # the group's OUT parts partition the data
        sizes = sorted(out.sum(dim=1).tolist())
        assert sizes[-1] - sizes[0] <= 1  # near-equal parts
    assert torch.equal(masks, balanced_membership(n, k, seed=3, folds=folds))
    assert not torch.equal(masks, balanced_membership(n, k, seed=4, folds=folds))
    with pytest.raises(ReferenceModelsError, match="multiple of `folds` = 4"):
        balanced_membership(n, 6, folds=4)
    with pytest.raises(ReferenceModelsError, match="folds"):
        balanced_membership(n, 4, folds=1)
    with pytest.raises(ReferenceModelsError, match="num_samples"):
        balanced_membership(2, 4, folds=4)


def test_train_resume_and_statistics(tmp_path) -> None:
    data = small_digits()
    refs = train_reference_models(
        make_seen_mlp,
        data,
        out_dir=tmp_path,
        k=4,
        seed=1,
        batch_size=16,
        trainer_kwargs=TRAINER,
        progress=False,
    )
    assert refs.k == 4
    assert refs.num_samples == NUM
    assert torch.equal(refs.in_mask, balanced_membership(NUM, 4, seed=1))
    for module, mask in zip(refs.modules, refs.in_mask, strict=True):
        # Each model trained on its IN examples only, each of them once per epoch.
        assert torch.equal(module.seen, mask.long() * TRAINER["max_epochs"])

    # Resumption: remove one model; a second call trains that one only, the rest stay as saved.
    kept = (tmp_path / "model_000.pt").read_bytes()
    (tmp_path / "model_002.pt").unlink()
    with pytest.raises(ReferenceModelsError, match=r"\[2\].*missing"):
        ReferenceModels.load(tmp_path, make_seen_mlp)
    before = SeenMLP.fits
    again = train_reference_models(
        make_seen_mlp,
        data,
        out_dir=tmp_path,
        k=4,
        seed=1,
        batch_size=16,
        trainer_kwargs=TRAINER,
        progress=False,
    )
    assert SeenMLP.fits - before == 1 + 1 + 4  # probe + the retrained model + 4 loaded
    assert (tmp_path / "model_000.pt").read_bytes() == kept
    assert torch.equal(again.modules[2].seen, refs.modules[2].seen)  # same seeds: same model
    with pytest.raises(ReferenceModelsError, match="recipe"):  # another recipe: not reused
        train_reference_models(
            make_seen_mlp,
            data,
            out_dir=tmp_path,
            k=4,
            seed=1,
            batch_size=16,
            trainer_kwargs={**TRAINER, "max_epochs": 3},
            progress=False,
        )
    with pytest.raises(ReferenceModelsError, match="k=4"):
        train_reference_models(
            make_seen_mlp,
            data,
            out_dir=tmp_path,
            k=2,
            seed=1,
            trainer_kwargs=TRAINER,
            progress=False,
        )
    quarters = train_reference_models(
        make_seen_mlp, data, out_dir=tmp_path / "quarters", k=4, seed=1, batch_size=16,
        trainer_kwargs=TRAINER, progress=False, folds=4,
    )  # fmt: skip
    assert torch.equal(quarters.in_mask, balanced_membership(NUM, 4, seed=1, folds=4))
    for module, mask in zip(quarters.modules, quarters.in_mask, strict=True):
        assert torch.equal(module.seen, mask.long() * TRAINER["max_epochs"])  # 3/4 each
    reloaded = ReferenceModels.load(tmp_path / "quarters", make_seen_mlp)  # masks re-derived
    assert torch.equal(reloaded.in_mask, quarters.in_mask)
    assert json.loads((tmp_path / "quarters" / "manifest.json").read_text())["folds"] == 4
    with pytest.raises(ReferenceModelsError, match="folds=2"):  # halves, not quarters
        train_reference_models(
            make_seen_mlp, data, out_dir=tmp_path, k=4, seed=1, batch_size=16,
            trainer_kwargs=TRAINER, progress=False, folds=4,
        )  # fmt: skip

    # Statistics: phi and loss of every (model, example) against an independent float64 route.
    loader = DataLoader(IndexedDataset(data), batch_size=50, shuffle=True)  # any order
    stats = again.statistics(loader)
    x, y = data.tensors
    for j, module in enumerate(again.modules):
        with torch.no_grad():
            logits = module(x).double().numpy()
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        py = p[np.arange(NUM), y.numpy()]
        # float32 logits of magnitude ~10: phi agrees to ~1e-5 (rounding of the logits).
        np.testing.assert_allclose(stats.phi[j].numpy(), np.log(py) - np.log1p(-py), atol=2e-5)
        np.testing.assert_allclose(stats.loss[j].numpy(), -np.log(py), atol=2e-5)
    out = stats.out_moments("phi")
    phi, mask = stats.phi.numpy(), stats.in_mask.numpy()
    for i in range(0, NUM, 17):
        col = phi[~mask[:, i], i]
        assert float(out.mean[i]) == pytest.approx(col.mean(), rel=1e-12)
        assert float(out.std[i]) == pytest.approx(col.std(ddof=1), rel=1e-9)
    # OUT models are the per-example oracle: on average they fit the example worse than IN.
    assert float(stats.in_moments("phi").mean.mean()) > float(out.mean.mean())

    # Targets for any forget set: k/2 = 2 OUT models per example are fewer than 3 -> refused.
    with pytest.raises(MeasurementError, match="at least 3"):
        stats.targets([0, 5])
    targets = stats.targets([0, 5], min_models=2, rule="range")
    with pytest.raises(ForgetSetError, match="duplicates"):  # the ids enter here, checked once
        stats.targets([5, 0, 5], min_models=2)
    with pytest.raises(ForgetSetError, match=rf"in \[0, {NUM}\)"):
        stats.targets([NUM], min_models=2)
    assert targets.band.lower.tolist() == [float(phi[~mask[:, i], i].min()) for i in (0, 5)]
    tested = stats.phi[0, [0, 5]]
    lira = stats.lira_scores(tested, torch.tensor([0, 5]), global_std=False)
    for value, i in zip(lira.tolist(), (0, 5), strict=True):
        col_in, col_out = phi[mask[:, i], i], phi[~mask[:, i], i]
        ref = scipy.stats.norm.logpdf(phi[0, i], col_in.mean(), col_in.std(ddof=1))
        ref -= scipy.stats.norm.logpdf(phi[0, i], col_out.mean(), col_out.std(ddof=1))
        assert value == pytest.approx(ref, rel=1e-9, abs=1e-9)
    fixed = stats.lira_scores(tested, torch.tensor([0, 5]))
    sd_in = np.sqrt(np.mean([phi[mask[:, i], i].var(ddof=1) for i in range(NUM)]))
    sd_out = np.sqrt(np.mean([phi[~mask[:, i], i].var(ddof=1) for i in range(NUM)]))
    for value, i in zip(fixed.tolist(), (0, 5), strict=True):
        ref = scipy.stats.norm.logpdf(phi[0, i], phi[mask[:, i], i].mean(), sd_in)
        ref -= scipy.stats.norm.logpdf(phi[0, i], phi[~mask[:, i], i].mean(), sd_out)
        assert value == pytest.approx(ref, rel=1e-9, abs=1e-9)
    # A loader over a Subset (ids = positions in it) or another data set would put values in
    # the wrong columns: refused by the manifest's fingerprint. The plain data set is fine.
    perm = torch.randperm(NUM, generator=torch.Generator().manual_seed(0)).tolist()
    with pytest.raises(ReferenceModelsError, match=r"fingerprint.*Subset"):
        again.statistics(DataLoader(Subset(data, perm), batch_size=50))
    plain = again.statistics(DataLoader(data, batch_size=50))  # ids from the sequential order
    # Other batches, the same columns: equal up to float32 rounding of the logits (see above).
    torch.testing.assert_close(plain.phi, stats.phi, rtol=0.0, atol=2e-5)
    stats.save(tmp_path / "stats.pt")
    loaded = ReferenceStatistics.load(tmp_path / "stats.pt")
    assert torch.equal(loaded.phi, stats.phi)
    assert torch.equal(loaded.in_mask, stats.in_mask)


def test_foreign_model_file_is_refused(tmp_path) -> None:
    train_reference_models(
        make_seen_mlp,
        small_digits(),
        out_dir=tmp_path,
        k=2,
        seed=0,
        trainer_kwargs=TRAINER,
        progress=False,
    )
    (tmp_path / "model_001.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ReferenceModelsError, match="delete it"):
        ReferenceModels.load(tmp_path, make_seen_mlp)


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_spawn_writes_complete_models(tmp_path) -> None:
    kwargs = {"max_epochs": 1, "accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}
    refs = train_reference_models(
        make_seen_mlp,
        small_digits(),
        out_dir=tmp_path,
        k=2,
        seed=0,
        batch_size=16,
        trainer_kwargs=kwargs,
        progress=False,
    )
    assert refs.k == 2
    for module, mask in zip(refs.modules, refs.in_mask, strict=True):
        # rank 0 saved its replica; it saw its shard of the model's IN examples only
        seen = module.seen > 0
        assert bool((seen <= mask).all())
        assert int(seen.sum()) >= int(mask.sum()) // 2


class _PairMLP(SeenMLP):
    """A module written for `(x, y)` batches, as many users write it."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)


def _make_pair_mlp() -> _PairMLP:
    return _PairMLP()


def test_a_training_step_for_pairs_is_told_about_the_ids(tmp_path) -> None:
    with pytest.raises(ReferenceModelsError, match=r"_PairMLP.*batch\[0\], batch\[1\]"):
        train_reference_models(
            _make_pair_mlp, small_digits(), out_dir=tmp_path, k=2, seed=0, batch_size=16,
            trainer_kwargs=TRAINER, progress=False,
        )  # fmt: skip
    # A training set with ids given by the user is the user's format: the error is theirs.
    with pytest.raises(ValueError, match="too many values to unpack") as caught:
        train_reference_models(
            _make_pair_mlp, IndexedDataset(small_digits()), out_dir=tmp_path / "own", k=2,
            seed=0, batch_size=16, trainer_kwargs=TRAINER, progress=False,
        )  # fmt: skip
    assert not isinstance(caught.value, ReferenceModelsError)
