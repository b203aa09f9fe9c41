"""Training side of the P-informativeness study: the monitored runs, the per-example norms of
every epoch, the option grid of P computed from them, and the baseline difficulty scores.

One monitored run (``PerInstancePrivacyMonitor``, online estimator, nominal sigma = 1, no
clipping: the library defaults) records the per-example gradient norm of every example in every
epoch (shuffled epochs: each example is seen once per epoch, so the ledger's ``last_norm`` at an
epoch end is that epoch's norm). Every other (sigma, C, alpha, composition) configuration of the
online estimator is a function of those norms (THEORY §1-§3): :func:`option_scores` computes it
and :func:`offline_matches_monitor` checks the formula against the monitor's own ledger. The
sweep estimator needs extra passes at the current weights and is a second monitored run.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_unlearn.accounting.conventions import dpsgd_ratios
from lightning_unlearn.accounting.rdp import per_step_rdp
from lightning_unlearn.callbacks import DifficultyMonitor, PerInstancePrivacyMonitor
from lightning_unlearn.data.splits import EpochSeededSampler
from lightning_unlearn.evaluation.functional import grand_scores, input_curvature
from lightning_unlearn.models import MLPClassifier
from lightning_unlearn.unlearning.reference_stats import score_model

BATCH, LR = 64, 0.1
ORDERS = (2, 4, 8, 16, 32)
DEFAULT_ORDER = 8  # P(x, 4 alpha) at alpha = 2 (THEORY §5)
TRAINER = {"accelerator": "cpu", "devices": 1, "deterministic": True}


def make_model(hidden: int) -> MLPClassifier:
    return MLPClassifier(input_dim=64, hidden=(hidden,), lr=LR)


def fit(hidden: int, data: Any, epochs: int, seed: int, callbacks: list) -> MLPClassifier:
    """Train from the initialisation of ``seed`` (seeded before the model is built)."""
    pl.seed_everything(seed, verbose=False)
    model = make_model(hidden)
    loader = DataLoader(data, batch_size=BATCH, sampler=EpochSeededSampler(len(data), seed))
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **TRAINER,
    )
    trainer.fit(model, train_dataloaders=loader)
    return model.eval()


class EpochNorms(Callback):
    """Each epoch's per-example norms from the monitor's ledger, and the weights after the
    first epoch (for the early score GraNd; copied as tensors, without the monitor's hooks)."""

    def __init__(self, monitor: PerInstancePrivacyMonitor) -> None:
        self.monitor = monitor
        self.rows: list[Tensor] = []
        self.first_epoch_state: dict[str, Tensor] | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ledger = self.monitor.ledger  # flushes the monitor's buffer
        seen = ledger.counts.cpu() == trainer.current_epoch + 1
        if not bool(seen.all()):
            raise RuntimeError("Expected every example seen once per epoch (shuffled epochs).")
        self.rows.append(ledger.last_norm.double().cpu().clone())
        if self.first_epoch_state is None:
            state = pl_module.state_dict()
            self.first_epoch_state = {k: v.detach().clone() for k, v in state.items()}


def monitor(estimator: str = "online", sweep_every: int = 100) -> PerInstancePrivacyMonitor:
    return PerInstancePrivacyMonitor(
        noise_multiplier=1.0,
        max_grad_norm=None,
        alphas=ORDERS,
        estimator=estimator,  # type: ignore[arg-type]
        sweep_every=sweep_every,
        log_histograms=False,
    )


def option_p(
    norms: Tensor,
    sample_rate: float,
    *,
    sigma: float,
    clip: float | None,
    order: int,
    holder_p: float | None = None,
) -> Tensor:
    r"""P of the online estimator from ``norms[e, i]`` (example ``i`` in epoch ``e``).

    Additive composition (THEORY §3): :math:`P = \sum_e \frac1q \varepsilon(\alpha; q, r_e)`.
    ``holder_p`` = p > 1 gives the Hölder option: every step at the inflated order
    :math:`p\alpha` with weight :math:`(p\alpha-1)/(p(\alpha-1))`. From Hölder's inequality on
    the step-wise factorised likelihood ratio, :math:`(\alpha-1) D_\alpha(\text{steps}) \le
    \frac{p\alpha-1}{p} D_{p\alpha}(\text{step 1}) + (\alpha-1) D_\alpha(\text{rest})` when the
    rest is bounded along the observed trajectory; this is in the spirit of Thudi et al. (2024),
    who take an expectation over runs instead (their orders inflate step after step); it is an
    explicit option of this study, never a silent default.
    """
    ratios = dpsgd_ratios(norms, sigma, clip)
    if holder_p is None:
        eps = per_step_rdp(ratios.flatten(), sample_rate, (order,))[:, 0]
        weight = 1.0
    else:
        big = round(holder_p * order)
        eps = per_step_rdp(ratios.flatten(), sample_rate, (big,))[:, 0]
        weight = (big - 1) / (holder_p * (order - 1))
    return (eps.reshape(norms.shape) * (weight / sample_rate)).sum(dim=0)


def option_grid(sigma_scaled: float, clip_med: float) -> dict[str, dict[str, Any]]:
    """The configurations of deliverable 3 (name -> option_p arguments)."""
    grid: dict[str, dict[str, Any]] = {}
    for s_name, sigma in (
        ("0.25", 0.25),
        ("1", 1.0),
        ("4", 4.0),
        ("med/2", sigma_scaled / 2),
        ("med", sigma_scaled),
        ("2med", 2 * sigma_scaled),
    ):
        for c_name, clip in (("none", None), ("1", 1.0), ("med", clip_med)):
            grid[f"sigma={s_name},C={c_name},a=8"] = {"sigma": sigma, "clip": clip, "order": 8}
    for order in ORDERS:
        grid[f"sigma=1,C=none,a={order}"] = {"sigma": 1.0, "clip": None, "order": order}
        grid[f"sigma=med,C=none,a={order}"] = {"sigma": sigma_scaled, "clip": None, "order": order}
    grid["sigma=1,C=none,a=8,holder2"] = {"sigma": 1.0, "clip": None, "order": 8, "holder_p": 2.0}
    grid["sigma=med,C=none,a=8,holder2"] = {
        "sigma": sigma_scaled,
        "clip": None,
        "order": 8,
        "holder_p": 2.0,
    }
    return grid


def _full(values: Tensor, ids: Tensor, n: int) -> Tensor:
    out = torch.full((n,), float("nan"), dtype=torch.float64)
    out[ids.long().cpu()] = values.double().cpu()
    return out


def train_and_score(hidden: int, epochs: int, train: Any, seed: int) -> dict[str, Any]:
    """The trained model, the option grid of P, the baselines and the estimator check."""
    n = len(train)
    mon = monitor()
    recorder = EpochNorms(mon)
    difficulty = DifficultyMonitor(num_samples=n)
    model = fit(hidden, train, epochs, seed, [mon, recorder, difficulty])
    norms = torch.stack(recorder.rows)  # [E, N]
    ledger = mon.ledger.to("cpu")
    q = BATCH / n  # the monitor's default sample rate: batch / N
    steps_per_epoch = math.ceil(n / BATCH)
    sweep = monitor("sweep", sweep_every=steps_per_epoch)
    sweep_model = fit(hidden, train, epochs, seed, [sweep])
    same = all(torch.equal(v, sweep_model.state_dict()[k]) for k, v in model.state_dict().items())
    sigma_scaled = float(norms[0].median())
    grid = option_grid(sigma_scaled, sigma_scaled)
    options = {name: option_p(norms, q, **kw) for name, kw in grid.items()}
    check = options["sigma=1,C=none,a=8"]
    monitor_p = ledger.privacy_loss(DEFAULT_ORDER).double()
    rel = float(((check - monitor_p).abs() / monitor_p.abs().clamp_min(1e-300)).max())
    loader = DataLoader(train, batch_size=512)
    _, loss, ids = score_model(model, loader)
    assert recorder.first_epoch_state is not None
    early = make_model(hidden)
    early.load_state_dict(recorder.first_epoch_state)
    early.eval()
    grand, gids = grand_scores(early, loader)
    curv, cids = input_curvature(model, loader, num_probes=8, seed=seed)
    diff = difficulty.scores(el2n_epoch=0)
    baselines = {
        "P_default": monitor_p,
        "P_sweep": sweep.ledger.privacy_loss(DEFAULT_ORDER).double().cpu(),
        "train_loss": _full(loss, ids, n),
        "sq_norm_sum": ledger.sq_norm_sum.double(),
        "el2n": diff["el2n"].double(),
        "grand": _full(grand, gids, n),
        "forgetting": diff["forgetting_events"].double(),
        "low_confidence": 1.0 - diff["mean_confidence"].double(),
        "curvature": _full(curv, cids, n),
    }
    return {
        "model": model,
        "baselines": baselines,
        "options": options,
        "sigma_scaled": sigma_scaled,
        "first_epoch_norm_quantiles": torch.quantile(
            norms[0], torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
        ).tolist(),
        "offline_vs_monitor_max_rel_diff": rel,
        "sweep_run_same_model": same,
        "sample_rate": q,
    }
