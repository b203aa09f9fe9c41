"""One forget set of the P-informativeness study: oracles, matched trajectories, steps, barriers.

For a forget set F of one training seed:

* M oracles are trained on the retain set with the original recipe (oracle 0 from the trained
  model's own initialisation, for the loss barrier; the others from fresh seeds);
* for every unlearning method, each oracle is *continued* with that method on the retain set
  for the cap, recording F at every step: the like-for-like target of step k is the oracles at
  step k (the unlearned model then has seen the recipe plus k steps too);
* the unlearning runs record F at every step; steps-to-unlearn is the first step from which
  the metric stays in its band for the hold window (censored otherwise), for the set (mean phi
  vs the oracles' mean phi), per example against its continued OUT reference models
  (``example_ref``) and per example against the M continued oracles (``example_oracle``). The
  static bands of the first measurement (the oracles' end state) are kept for comparison;
* loss barriers on F between the trained model and its unlearned copy (same initialisation by
  construction) and between the trained model and oracle 0 (same initialisation).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from _study_train import BATCH, TRAINER, fit
from torch.utils.data import DataLoader, Subset

from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.evaluation.functional import (
    binned_kl,
    first_hold_step,
    first_hold_step_in_band,
    loss_barrier,
    tolerance_band,
    trajectory_band,
)
from lightning_unlearn.unlearning import record_unlearning

UNLEARN_LR, Z = 0.1, 2.0
METHOD_KWARGS: dict[str, dict[str, Any]] = {
    "finetune": {},
    "sgld": {"sgld_sigma": 0.01},
    "l1_sparse": {"l1_weight": 1e-4},
}
CHECK_EVERY = 10  # the old check interval, for the every-step comparison


def _steps(values: torch.Tensor, band: Any, hold: int) -> dict[str, Any]:
    res = first_hold_step_in_band(values, band.lower, band.upper, hold=hold)
    return {"steps": res.steps.tolist(), "arrived": res.arrived.tolist()}


def _static(values: torch.Tensor, band: Any, hold: int) -> dict[str, Any]:
    res = first_hold_step(values, band.lower, band.upper, hold=hold)
    return {"steps": res.steps.tolist(), "arrived": res.arrived.tolist()}


def _coarse_steps(values: torch.Tensor, band: Any, hold: int) -> list:
    """``[steps, arrived]`` as a check every ``CHECK_EVERY`` steps would report them (for
    comparison only; the study's steps are read at every step)."""
    idx = torch.arange(0, values.shape[-1], CHECK_EVERY)
    res = first_hold_step_in_band(
        values[..., idx],
        band.lower[..., idx],
        band.upper[..., idx],
        hold=math.ceil(hold / CHECK_EVERY),
    )
    return [int(res.steps) * CHECK_EVERY, bool(res.arrived)]


def _record(model: Any, train: Any, ids: torch.Tensor, sc: Any, method: str, seed: int) -> Any:
    frdm = ForgetRetainDataModule(train, ids, heldout=None, batch_size=BATCH, seed=seed)
    return record_unlearning(
        model,
        frdm,
        max_steps=sc.cap,
        method=method,
        lr=UNLEARN_LR,
        seed=seed,
        trainer_kwargs=TRAINER,
        **METHOD_KWARGS[method],
    )


def _method(
    sc: Any, seed: int, b: int, ids: torch.Tensor, ctx: dict[str, Any], oracles: list, method: str
) -> dict[str, Any]:
    train, model, hold = ctx["train"], ctx["model"], sc.hold
    continued = method if sc.matched_methods else "finetune"
    if continued not in ctx["oracle_phi"]:
        ctx["oracle_phi"][continued] = torch.stack(
            [
                _record(o, train, ids, sc, continued, seed * 1000 + 10 * b + m + 500)[0].phi
                for m, o in enumerate(oracles)
            ]
        )  # [M, T, E]
    oracle_phi = ctx["oracle_phi"][continued]
    set_band = trajectory_band(oracle_phi.mean(dim=2))  # [T]
    static_set = tolerance_band(oracle_phi[:, 0].mean(dim=1))
    ex_oracle = trajectory_band(oracle_phi.transpose(1, 2))  # [E, T]
    runs, finals = [], []
    n_runs = sc.runs if method == "finetune" else sc.other_runs
    forget_loader = DataLoader(Subset(train, ids.tolist()), batch_size=512)
    for r in range(n_runs):
        traj, unlearned = _record(model, train, ids, sc, method, seed * 100 + r)
        set_metric = traj.phi.mean(dim=1)
        record: dict[str, Any] = {
            "set": _steps(set_metric, set_band, hold),
            "set_static": _static(set_metric, static_set, hold),
            "set_coarse_steps": _coarse_steps(set_metric, set_band, hold),
            "example_oracle": _steps(traj.phi.T, ex_oracle, hold),
            "set_phi_first_last": [float(set_metric[0]), float(set_metric[-1])],
        }
        if method == "finetune":
            ref_band = ctx["ref_traj"].targets(ids, z=Z)
            static_ref = type(ref_band)(*(edge[:, 0] for edge in ref_band))  # step 0
            record["example_ref"] = _steps(traj.phi.T, ref_band, hold)
            record["example_ref_static"] = _static(traj.phi.T, static_ref, hold)
        if r == 0:
            record["barrier_unlearned"] = float(loss_barrier(model, unlearned, forget_loader)[0])
        finals.append(traj.phi[-1])
        runs.append(record)
    bins = max(2, min(10, (n_runs + len(oracles)) // 2))
    klom = binned_kl(torch.stack(finals), oracle_phi[:, -1], num_bins=bins).mean()
    return {
        "oracles_continued_with": continued,
        "set_band_first_last": [
            [float(set_band.lower[0]), float(set_band.upper[0])],
            [float(set_band.lower[-1]), float(set_band.upper[-1])],
        ],
        "klom_final_mean": float(klom),
        "runs": runs,
    }


def measure_set(sc: Any, seed: int, b: int, ids: torch.Tensor, ctx: dict[str, Any]) -> dict:
    """All measurements of one forget set (see the module docstring)."""
    train = ctx["train"]
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[ids] = False
    retain = Subset(train, torch.nonzero(keep).flatten().tolist())
    oracles = []
    for m in range(sc.oracles):
        # oracle 0 starts from the trained model's initialisation (seed), the others afresh
        oseed = seed if m == 0 else seed * 1000 + 10 * b + m
        oracles.append(fit(sc.hidden, retain, sc.epochs, oseed, []))
    forget_loader = DataLoader(Subset(train, ids.tolist()), batch_size=512)
    model = ctx["model"]
    ctx = {**ctx, "oracle_phi": {}}  # this set's oracle trajectories, per continuing method
    return {
        "seed": seed,
        "bin": b,
        "ids": ids.tolist(),
        "scores": {k: float(v[ids].mean()) for k, v in ctx["scores"].items()},
        "barrier_oracle_same_init": float(loss_barrier(model, oracles[0], forget_loader)[0]),
        "barrier_oracle_other_init": float(loss_barrier(model, oracles[1], forget_loader)[0]),
        "methods": {
            method: _method(sc, seed, b, ids, ctx, oracles, method) for method in sc.methods
        },
    }
