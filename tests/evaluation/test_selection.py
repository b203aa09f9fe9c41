"""Quantile forget sets, Spearman tables (vs scipy) and steps-to-unlearn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata, spearmanr

from lightning_unlearn.evaluation.functional import (
    correlation_table,
    forget_sets_by_quantile,
    steps_to_unlearn,
)


def test_forget_sets_by_quantile_respect_bins():
    scores = torch.rand(103, generator=torch.Generator().manual_seed(0))
    sets = forget_sets_by_quantile(scores, n_bins=4, size=10, seed=3)
    ranks = rankdata(scores.numpy(), method="ordinal") - 1  # 0-based rank, independent of torch
    bounds = np.cumsum([0] + [len(b) for b in np.array_split(np.arange(103), 4)])
    for k, ids in enumerate(sets):
        assert len(ids) == 10
        assert len(set(ids.tolist())) == 10
        assert ((ranks[ids.numpy()] >= bounds[k]) & (ranks[ids.numpy()] < bounds[k + 1])).all()
    again = forget_sets_by_quantile(scores, n_bins=4, size=10, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(sets, again, strict=True))
    other = forget_sets_by_quantile(scores, n_bins=4, size=10, seed=4)
    assert any(not torch.equal(a, b) for a, b in zip(sets, other, strict=True))


def test_forget_sets_by_quantile_rejects_bad_sizes():
    with pytest.raises(ValueError, match="size"):
        forget_sets_by_quantile(torch.arange(10.0), n_bins=3, size=4)
    with pytest.raises(ValueError, match="finite"):
        forget_sets_by_quantile(torch.tensor([0.0, float("nan")]), n_bins=1, size=1)


def test_correlation_table_equals_scipy_spearman():
    g = torch.Generator().manual_seed(0)
    privacy = torch.rand(200, generator=g)
    el2n = privacy + 0.3 * torch.rand(200, generator=g)
    forgetting = (privacy * 4 + torch.rand(200, generator=g)).floor()  # many ties
    conf = -privacy + torch.rand(200, generator=g)
    conf[::7] = float("nan")
    scores = {"el2n": el2n, "forgetting": forgetting, "confidence": conf}
    table = correlation_table({"P(alpha=8)": privacy, "eps": privacy.sqrt()}, scores)
    for p_name, p in {"P(alpha=8)": privacy, "eps": privacy.sqrt()}.items():
        for name, s in scores.items():
            keep = ~s.isnan()
            expected = spearmanr(p[keep].numpy(), s[keep].numpy()).statistic
            assert table[p_name][name] == pytest.approx(expected, abs=1e-5)
    assert table["P(alpha=8)"]["confidence"] < 0 < table["P(alpha=8)"]["el2n"]
    with pytest.raises(ValueError, match="equal length"):
        correlation_table(privacy, {"x": privacy[:10]})


def test_steps_to_unlearn_scripted():
    traj = torch.tensor([[0.9, 0.6, 0.45, 0.3], [0.9, 0.9, 0.8, 0.7]])
    got = steps_to_unlearn(traj, torch.tensor([0.5, 0.75]), tau=0.06, steps=[0, 10, 20, 40])
    assert got.tolist() == [20, 20]
    assert steps_to_unlearn(traj, 0.0, tau=0.01).tolist() == [-1, -1]
    assert steps_to_unlearn([1.0, 0.5], 1.0, tau=0.0).item() == 0
    with pytest.raises(ValueError, match="tau"):
        steps_to_unlearn([1.0], 1.0, tau=-1.0)
    with pytest.raises(ValueError, match="steps"):
        steps_to_unlearn([1.0, 2.0], 1.0, tau=0.1, steps=[0])
