"""Membership inference and forget quality (THEORY §6).

A loss-threshold attack [Yeom et al. 2018] scores an example as a member when its loss is low;
its AUROC between the forget set and held-out data is 0.5 when the two are indistinguishable.
A learned attack [Shokri et al. 2017, in the simplified form the unlearning literature uses]
trains a classifier on loss / confidence features with cross-validation. The forget-quality test
compares the forget-set losses of the unlearned model and of the oracle with a two-sample
Kolmogorov-Smirnov test [Maini et al. 2024, TOFU].
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "KSResult",
    "LearnedMIAResult",
    "binary_auroc",
    "forget_quality_ks",
    "learned_mia",
    "loss_mia_auroc",
    "mia_features",
    "prediction_divergence",
]


def _as_1d(values: Tensor, name: str) -> Tensor:
    values = torch.as_tensor(values)
    if values.dim() != 1 or values.numel() == 0:
        raise ValueError(
            f"Expected `{name}` to be a non-empty 1-D tensor, but got shape {tuple(values.shape)}."
        )
    if not torch.isfinite(values.double()).all():
        raise ValueError(f"Expected `{name}` to be finite, but it holds NaN or infinite values.")
    return values


def _binary_auroc_compute(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """AUROC as the Mann-Whitney statistic with average ranks for ties, in float64."""
    n_pos, n_neg = pos_scores.numel(), neg_scores.numel()
    scores = torch.cat([pos_scores.double(), neg_scores.double().to(pos_scores.device)])
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    upper = counts.cumsum(0).double()  # 1-based rank of the last copy of each distinct value
    average_rank = upper - (counts.double() - 1.0) / 2.0
    rank_sum = average_rank[inverse[:n_pos]].sum()
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def binary_auroc(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Area under the ROC curve of scores where positives should score higher.

    Computed exactly as the normalised Mann-Whitney U statistic (ties count one half):

    .. math::

        \\mathrm{AUROC} = \\frac{1}{n_+ n_-} \\sum_{i \\in +} \\sum_{j \\in -}
            \\left( [s_i > s_j] + \\tfrac12 [s_i = s_j] \\right)

    Args:
        pos_scores: scores of the positive examples, 1-D.
        neg_scores: scores of the negative examples, 1-D.

    Returns:
        A float64 scalar tensor in ``[0, 1]``.

    Raises:
        ValueError: an input is empty, not 1-D or not finite.

    Example:
        >>> import torch
        >>> binary_auroc(torch.tensor([0.9, 0.4]), torch.tensor([0.4, 0.1])).item()
        0.875
    """
    return _binary_auroc_compute(_as_1d(pos_scores, "pos_scores"), _as_1d(neg_scores, "neg_scores"))


def loss_mia_auroc(member_losses: Tensor, nonmember_losses: Tensor) -> Tensor:
    """AUROC of the loss-threshold membership attack (THEORY §6; Yeom et al. 2018).

    The attack predicts "member" when the loss is below a threshold; sweeping the threshold gives

    .. math::

        \\mathrm{AUROC} = P(\\ell_{\\text{member}} < \\ell_{\\text{non-member}})
            + \\tfrac12 P(\\ell_{\\text{member}} = \\ell_{\\text{non-member}}).

    0.5 means members and non-members are indistinguishable by loss; above 0.5 the members
    (for unlearning: the forget set) are still recognisable.

    Args:
        member_losses: per-example losses of the candidate members (e.g. the forget set), 1-D.
        nonmember_losses: per-example losses of held-out examples never trained on, 1-D.

    Returns:
        A float64 scalar tensor in ``[0, 1]``.

    Raises:
        ValueError: an input is empty, not 1-D or not finite.

    Example:
        >>> import torch
        >>> loss_mia_auroc(torch.tensor([0.1, 0.2]), torch.tensor([0.5, 0.15])).item()
        0.75
    """
    member = _as_1d(member_losses, "member_losses")
    nonmember = _as_1d(nonmember_losses, "nonmember_losses")
    return _binary_auroc_compute(-member, -nonmember)


def mia_features(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-example attack features from a classifier's outputs.

    Columns: cross-entropy loss, true-class probability, maximum probability, predictive
    entropy, and the true-class logit margin (true logit minus the largest other logit).

    Args:
        logits: ``[N, C]`` logits.
        targets: ``[N]`` integer labels.

    Returns:
        ``[N, 5]`` float tensor on the logits' device.

    Example:
        >>> import torch
        >>> mia_features(torch.zeros(2, 4), torch.tensor([0, 3])).shape
        torch.Size([2, 5])
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            "Expected `logits` [N, C] and `targets` [N], but got shapes "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}."
        )
    logits = logits.float()
    targets = targets.long()
    log_probs = F.log_softmax(logits, dim=-1)
    probs = log_probs.exp()
    loss = -log_probs.gather(1, targets[:, None]).squeeze(1)
    true_prob = probs.gather(1, targets[:, None]).squeeze(1)
    entropy = -(probs * log_probs).sum(dim=1)
    others = logits.scatter(1, targets[:, None], float("-inf"))
    margin = logits.gather(1, targets[:, None]).squeeze(1) - others.max(dim=1).values
    return torch.stack([loss, true_prob, probs.max(dim=1).values, entropy, margin], dim=1)


class LearnedMIAResult(NamedTuple):
    """Cross-validated result of a learned membership attack."""

    auroc: float
    """Mean held-out-fold AUROC (0.5: the attack cannot tell members apart)."""
    accuracy: float
    """Mean held-out-fold accuracy on class-balanced data."""
    fold_aurocs: list[float]
    """AUROC of each fold, to judge the spread."""


def learned_mia(
    member_features: Tensor,
    nonmember_features: Tensor,
    *,
    classifier: Literal["logistic", "svc"] = "logistic",
    n_splits: int = 5,
    seed: int = 0,
) -> LearnedMIAResult:
    """Membership attack learned on per-example features, scored by cross-validation.

    Members and non-members are first balanced by subsampling the larger group (seeded), so 50%
    accuracy is chance. Features are standardised inside each fold. Needs scikit-learn (the
    ``dev`` / ``report`` extras).

    Args:
        member_features: ``[N_m, F]`` (or ``[N_m]``) features of candidate members, e.g. from
            :func:`mia_features` on the forget set.
        nonmember_features: ``[N_n, F]`` (or ``[N_n]``) features of held-out examples.
        classifier: ``"logistic"`` (logistic regression) or ``"svc"`` (RBF support vector
            classifier).
        n_splits: number of stratified folds (>= 2).
        seed: seed of the subsampling and of the fold split.

    Returns:
        A :class:`LearnedMIAResult` with the mean fold AUROC and accuracy.

    Raises:
        ImportError: scikit-learn is missing.
        ValueError: bad shapes, too few examples for ``n_splits`` or an unknown classifier.
    """
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import StratifiedKFold
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "`learned_mia` needs scikit-learn; install it with "
            "`pip install 'lightning_unlearn[report]'` or `pip install scikit-learn`."
        ) from err
    if classifier not in ("logistic", "svc"):
        raise ValueError(f"Expected `classifier` 'logistic' or 'svc', but got {classifier!r}.")
    members = torch.as_tensor(member_features).detach().double().cpu()
    nonmembers = torch.as_tensor(nonmember_features).detach().double().cpu()
    members = members[:, None] if members.dim() == 1 else members
    nonmembers = nonmembers[:, None] if nonmembers.dim() == 1 else nonmembers
    if members.dim() != 2 or nonmembers.dim() != 2 or members.shape[1] != nonmembers.shape[1]:
        raise ValueError(
            "Expected member and non-member features [N, F] with the same F, but got shapes "
            f"{tuple(members.shape)} and {tuple(nonmembers.shape)}."
        )
    n = min(len(members), len(nonmembers))
    if n < n_splits or n_splits < 2:
        raise ValueError(
            f"Expected at least `n_splits` >= 2 examples per group, but got {n} per group and "
            f"n_splits={n_splits}; use fewer splits or more examples."
        )
    generator = torch.Generator().manual_seed(seed)
    members = members[torch.randperm(len(members), generator=generator)[:n]]
    nonmembers = nonmembers[torch.randperm(len(nonmembers), generator=generator)[:n]]
    features = torch.cat([members, nonmembers]).numpy()
    labels = torch.cat([torch.ones(n), torch.zeros(n)]).long().numpy()

    aurocs, accuracies = [], []
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for train, test in folds.split(features, labels):
        model = (
            LogisticRegression(max_iter=1000)
            if classifier == "logistic"
            else SVC(kernel="rbf", random_state=seed)
        )
        pipeline = make_pipeline(StandardScaler(), model)
        pipeline.fit(features[train], labels[train])
        scores = pipeline.decision_function(features[test])
        aurocs.append(float(roc_auc_score(labels[test], scores)))
        accuracies.append(float((pipeline.predict(features[test]) == labels[test]).mean()))
    return LearnedMIAResult(
        auroc=sum(aurocs) / len(aurocs),
        accuracy=sum(accuracies) / len(accuracies),
        fold_aurocs=aurocs,
    )


class KSResult(NamedTuple):
    """Two-sample Kolmogorov-Smirnov statistic and its p-value."""

    statistic: Tensor
    """Largest gap between the two empirical CDFs, in ``[0, 1]``."""
    pvalue: Tensor
    """Asymptotic p-value (Kolmogorov distribution with Stephens' small-sample correction)."""


def _ks_statistic(a: Tensor, b: Tensor) -> Tensor:
    a, b = a.double().sort().values, b.double().to(a.device).sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True).double() / a.numel()
    cdf_b = torch.searchsorted(b, grid, right=True).double() / b.numel()
    return (cdf_a - cdf_b).abs().max()


def _kolmogorov_sf(lam: float, terms: int = 100) -> float:
    """Survival function of the Kolmogorov distribution, Q(lambda) = 2 sum (-1)^(k-1) e^(-2k²λ²)."""
    if lam < 1e-3:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, terms))
    return min(1.0, max(0.0, 2.0 * total))


def forget_quality_ks(unlearned_losses: Tensor, oracle_losses: Tensor) -> KSResult:
    """Forget quality: two-sample KS test between forget-set losses of two models (THEORY §6).

    Compares the forget-set losses of the unlearned model with those of the oracle retrained
    without the forget set; a large p-value means the two loss distributions are
    indistinguishable (Maini et al. 2024 call the p-value "forget quality").

    .. math::

        D = \\sup_t |\\hat F_u(t) - \\hat F_o(t)|, \\qquad
        p \\approx Q_{KS}\\big((\\sqrt{n_e} + 0.12 + 0.11/\\sqrt{n_e}) D\\big),
        \\quad n_e = \\frac{n_u n_o}{n_u + n_o}

    The statistic is exact; the p-value is the asymptotic Kolmogorov tail with Stephens'
    correction (within about 0.01 of the exact value for samples of a hundred or more).

    Args:
        unlearned_losses: forget-set losses of the unlearned model, 1-D.
        oracle_losses: forget-set losses of the oracle, 1-D.

    Returns:
        A :class:`KSResult` ``(statistic, pvalue)`` of float64 scalar tensors.

    Raises:
        ValueError: an input is empty, not 1-D or not finite.

    Example:
        >>> import torch
        >>> result = forget_quality_ks(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.4, 0.5]))
        >>> result.statistic.item()
        1.0
    """
    a = _as_1d(unlearned_losses, "unlearned_losses")
    b = _as_1d(oracle_losses, "oracle_losses")
    statistic = _ks_statistic(a, b)
    n_eff = a.numel() * b.numel() / (a.numel() + b.numel())
    root = math.sqrt(n_eff)
    # One host sync per call: the p-value is a scalar summary, not a hot path.
    lam = (root + 0.12 + 0.11 / root) * float(statistic)
    pvalue = torch.tensor(_kolmogorov_sf(lam), dtype=torch.float64, device=statistic.device)
    return KSResult(statistic=statistic, pvalue=pvalue)


def prediction_divergence(
    logits: Tensor,
    oracle_logits: Tensor,
    *,
    kind: Literal["kl", "js"] = "kl",
    reduction: Literal["mean", "sum", "none"] = "mean",
) -> Tensor:
    """Divergence between a model's predictive distributions and the oracle's, per example.

    With :math:`p = \\operatorname{softmax}(\\text{logits})` and
    :math:`q = \\operatorname{softmax}(\\text{oracle\\_logits})` (natural logarithms):

    .. math::

        \\mathrm{KL}(p \\,\\|\\, q) = \\sum_c p_c \\log \\frac{p_c}{q_c}, \\qquad
        \\mathrm{JS}(p, q) = \\tfrac12 \\mathrm{KL}(p \\,\\|\\, m)
            + \\tfrac12 \\mathrm{KL}(q \\,\\|\\, m), \\quad m = \\tfrac12 (p + q)

    Args:
        logits: ``[N, C]`` logits of the (unlearned) model.
        oracle_logits: ``[N, C]`` logits of the oracle on the same examples, same order.
        kind: ``"kl"`` for KL(model || oracle) or ``"js"`` for the Jensen-Shannon divergence
            (symmetric, at most log 2).
        reduction: ``"mean"`` / ``"sum"`` over examples, or ``"none"`` for the ``[N]`` values.

    Returns:
        The divergence (float32 or the inputs' float type), a scalar unless ``reduction="none"``.

    Raises:
        ValueError: shapes differ, or ``kind`` / ``reduction`` is unknown.

    Example:
        >>> import torch
        >>> prediction_divergence(torch.zeros(2, 3), torch.zeros(2, 3)).item()
        0.0
    """
    if logits.shape != oracle_logits.shape or logits.dim() != 2:
        raise ValueError(
            "Expected `logits` and `oracle_logits` of the same shape [N, C], but got "
            f"{tuple(logits.shape)} and {tuple(oracle_logits.shape)}."
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"Expected `reduction` 'mean', 'sum' or 'none', but got {reduction!r}.")
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_q = F.log_softmax(oracle_logits.float().to(logits.device), dim=-1)
    if kind == "kl":
        values = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    elif kind == "js":
        log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
        values = 0.5 * (log_p.exp() * (log_p - log_m)).sum(-1)
        values = values + 0.5 * (log_q.exp() * (log_q - log_m)).sum(-1)
    else:
        raise ValueError(f"Expected `kind` 'kl' or 'js', but got {kind!r}.")
    values = values.clamp_min(0.0)  # rounding can leave -1e-8 where p == q
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values
