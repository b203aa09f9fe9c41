"""The experiment of Sepahvand et al. (ICML 2025) on Fashion-MNIST, callable from Python.

For each seed: train a GroupNorm CNN with :class:`~lightning_unlearn.PerInstancePrivacyMonitor`
and :class:`~lightning_unlearn.DifficultyMonitor`; compute P(x, 4α) and the difficulty scores
(EL2N, GraNd, forgetting events, confidence, input curvature); draw forget sets from the
P-quantile bins and from the top bin of every difficulty score; for each forget set retrain an
oracle, measure the loss barrier between the original model and the oracle on the forget set,
and unlearn it by every method, measuring the steps until the forget set's mean loss is within
τ of the oracle's (THEORY §6). The report tests the paper's three claims: P predicts the steps
needed; larger P, larger barrier; P finds harder groups than the heuristics.

``lightning-unlearn reproduce`` is this function on the command line (``--config``,
``--print_config``; the options are its parameters).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Subset

from lightning_unlearn.accounting import PrivacyLedger, UnlearningConstants
from lightning_unlearn.callbacks.difficulty_monitor import DifficultyMonitor
from lightning_unlearn.data.modules import FashionMNISTDataModule
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.evaluation.functional import (
    correlation_table,
    forget_sets_by_quantile,
    grand_scores,
    input_curvature,
    steps_to_unlearn,
)
from lightning_unlearn.experiments._settings import output_directory, python_call, validated
from lightning_unlearn.experiments.pipeline import (
    TrainOutput,
    evaluate_test_split,
    forget_set_barrier,
    retrain_oracle,
    tensorboard_logger,
    train_with_monitor,
    unlearn_forget_set,
)
from lightning_unlearn.experiments.reproduce_summary import summarise
from lightning_unlearn.integrity import write_json
from lightning_unlearn.models import ClassifierModule, GroupNormCNN
from lightning_unlearn.report.reproduce import write_reproduce_report
from lightning_unlearn.unlearning.budget import compute_budget, forget_privacy_loss
from lightning_unlearn.unlearning.module import Method
from lightning_unlearn.unlearning.oracle_stopping import OracleMatchStopping
from lightning_unlearn.unlearning.result import evaluate_splits

__all__ = ["HEURISTICS", "run_reproduce"]

HEURISTICS = ("el2n", "grand", "forgetting_events", "low_confidence", "curvature")
"""The difficulty scores whose top bin is a forget set beside the P bins (claim 3)."""


@dataclasses.dataclass(frozen=True)
class _Reproduce:
    """The experiment's settings (:func:`run_reproduce`'s arguments), checked."""

    output_dir: Path
    data_dir: str | None
    scale: float
    subset: int
    test_subset: int
    forget_size: int
    n_bins: int
    seeds: int
    epochs: int
    batch_size: int
    lr: float
    noise_multiplier: float
    alpha: int
    methods: Sequence[Method]
    unlearn_lr: float
    sgld_sigma: float
    max_steps: int
    check_every: int
    tau: float
    early_epoch: int
    curvature_probes: int
    heuristic_groups: bool
    progress: bool


def run_reproduce(
    output_dir: str | Path,
    *,
    data_dir: str | None = None,
    scale: float = 1.0,
    subset: int = 2000,
    test_subset: int = 1000,
    forget_size: int = 40,
    n_bins: int = 5,
    seeds: int = 2,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 0.05,
    noise_multiplier: float = 1.0,
    alpha: int = 2,
    methods: Sequence[Method] = ("finetune", "sgld"),
    unlearn_lr: float = 0.05,
    sgld_sigma: float = 0.01,
    max_steps: int = 300,
    check_every: int = 10,
    tau: float = 0.1,
    early_epoch: int = 1,
    curvature_probes: int = 2,
    heuristic_groups: bool = True,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Reproduce the per-instance-privacy unlearning experiment on Fashion-MNIST (GroupNorm
    CNN): steps-to-unlearn and loss barriers against P-quantile bins, Spearman correlations of
    P with difficulty scores, and the hardest group per selection rule; the report, plots and
    ``results.json`` go to ``output_dir``.

    Args:
        output_dir: directory for the outputs (created).
        data_dir: Fashion-MNIST's IDX directory (default /usr/share/datasets/fashion-mnist).
        scale: multiplies the training subset, the test subset and the forget-set size (1.0:
            about 25 minutes on 2 busy CPU cores; 30 uses all 60k training images).
        subset: training pool at scale 1.
        test_subset: test examples at scale 1.
        forget_size: forget-set size at scale 1.
        n_bins: P quantile bins (the paper's protocol: >= 5).
        seeds: number of seeds (the paper's protocol: >= 2).
        epochs: training and oracle epochs.
        batch_size: training batch size.
        lr: training SGD learning rate.
        noise_multiplier: nominal σ of the accounting (THEORY §1: no noise is added).
        alpha: Rényi order; P is read at order 4α.
        methods: unlearning methods (:data:`~lightning_unlearn.unlearning.module.METHODS`).
        unlearn_lr: unlearning learning rate.
        sgld_sigma: σ > 0 of SGLD (method ``"sgld"``).
        max_steps: unlearning step cap (runs that never reach the oracle count as the cap).
        check_every: steps between the oracle-match checks.
        tau: tolerance on the forget-set mean loss vs the oracle's (nats, THEORY §6).
        early_epoch: epoch of the 'early' EL2N / GraNd scores.
        curvature_probes: Hutchinson probes of the input-curvature score.
        heuristic_groups: also unlearn the forget sets chosen by the difficulty scores
            (claim 3; False is faster).
        progress: show the progress bars.
        command: how the run was started, shown in the report (default: this call).

    Returns:
        The results also written to ``results.json`` (there without the per-example P and
        scores): ``settings``, ``order``, per seed the rows of every forget set (with
        :func:`~lightning_unlearn.unlearning.result.evaluate_splits` of the original and
        oracle models), and the claims' ``summary``
        (:func:`~lightning_unlearn.experiments.reproduce_summary.summarise`).

    Raises:
        InvalidArgumentError: a setting of the wrong type or out of range.
        DatasetNotFoundError: the Fashion-MNIST files are missing.

    Example:
        >>> results = run_reproduce("outputs/reproduce", scale=0.05, seeds=1)  # doctest: +SKIP
        >>> results["summary"]["claim1"]["sgld"]["spearman_P_steps"]  # doctest: +SKIP
    """
    # at this point locals() holds exactly the arguments
    arguments = {k: v for k, v in locals().items() if k != "command"}
    settings = validated(_Reproduce(**{**arguments, "output_dir": Path(output_dir)}))
    if settings.n_bins < 5 or settings.seeds < 2:
        _say(
            f"note: the paper's protocol uses >= 5 bins and >= 2 seeds (got {settings.n_bins}, "
            f"{settings.seeds})"
        )
    start = time.perf_counter()
    out = output_directory(settings.output_dir)
    per_seed = [_one_seed(settings, seed) for seed in range(settings.seeds)]
    results: dict[str, Any] = {
        "command": command or python_call("run_reproduce", arguments),
        "settings": dataclasses.asdict(settings),
        "order": 4 * settings.alpha,
        "seeds": per_seed,
    }
    results["summary"] = summarise(results)
    results["seconds"] = round(time.perf_counter() - start, 1)
    slim = {
        **results,
        "seeds": [{k: v for k, v in s.items() if k not in ("privacy", "scores")} for s in per_seed],
    }
    write_json(out / "results.json", slim, indent=2, default=str)
    md, page = write_reproduce_report(out, results)
    _say(f"done in {results['seconds']} s")
    print(f"\nReport: {page.resolve()}\n        {md.resolve()}")
    return results


def _say(text: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _difficulty_scores(
    settings: _Reproduce,
    model: ClassifierModule,
    trained: TrainOutput,
    dm: FashionMNISTDataModule,
    monitor: DifficultyMonitor,
) -> dict[str, torch.Tensor]:
    """The heuristics' scores of every training example (float64, indexed by sample id)."""
    recorded = monitor.scores(el2n_epoch=settings.early_epoch - 1)
    loader = dm.train_eval_dataloader()
    early = copy.deepcopy(model)
    if trained.early_state is not None:
        early.load_state_dict(trained.early_state)
    grand, grand_ids = grand_scores(early, loader)
    curv, curv_ids = input_curvature(model, loader, num_probes=settings.curvature_probes, seed=0)
    n = dm.num_train
    out = {
        "el2n": recorded["el2n"].cpu(),
        "grand": torch.empty(n, dtype=torch.float64),
        "forgetting_events": recorded["forgetting_events"].cpu(),
        "low_confidence": (1.0 - recorded["mean_confidence"]).cpu(),
        "curvature": torch.empty(n, dtype=torch.float64),
    }
    out["grand"][grand_ids.cpu()] = grand.double().cpu()
    out["curvature"][curv_ids.cpu()] = curv.double().cpu()
    return out


def _train_seed(
    settings: _Reproduce, seed: int
) -> tuple[FashionMNISTDataModule, ClassifierModule, TrainOutput, DifficultyMonitor]:
    """One seed's data and a model trained with the privacy and difficulty monitors."""
    pl.seed_everything(seed, workers=True, verbose=False)
    dm = FashionMNISTDataModule(
        data_dir=settings.data_dir,
        batch_size=settings.batch_size,
        subset=max(100, round(settings.subset * settings.scale)),
        test_subset=max(100, round(settings.test_subset * settings.scale)),
        seed=seed,
    )
    dm.setup()
    _say(
        f"seed {seed}: training on {dm.num_train} Fashion-MNIST images for {settings.epochs} epochs"
    )
    model = GroupNormCNN(in_channels=1, num_classes=10, input_size=28, lr=settings.lr)
    difficulty = DifficultyMonitor(num_samples=dm.num_train)
    out = settings.output_dir
    trained = train_with_monitor(
        model,
        dm,
        epochs=settings.epochs,
        noise_multiplier=settings.noise_multiplier,
        save_dir=out / f"seed{seed}",
        logger=tensorboard_logger(out / "tensorboard", f"seed{seed}"),
        progress=settings.progress,
        extra_callbacks=[difficulty],
        snapshot_epoch=settings.early_epoch,
    )
    model.eval()
    return dm, model, trained, difficulty


def _selections(
    settings: _Reproduce,
    privacy: torch.Tensor,
    scores: dict[str, torch.Tensor],
    size: int,
    seed: int,
) -> list[tuple[str, str, torch.Tensor]]:
    """``(kind, label, forget ids)``: every P bin, then the top bin of every heuristic."""
    selections = [
        ("P bin", f"P bin {b + 1}", ids.cpu())
        for b, ids in enumerate(forget_sets_by_quantile(privacy, settings.n_bins, size, seed=seed))
    ]
    if settings.heuristic_groups:
        for name in HEURISTICS:
            top = forget_sets_by_quantile(scores[name], settings.n_bins, size, seed=seed)[-1]
            selections.append(("heuristic", f"top {name}", top.cpu()))
    return selections


def _one_seed(settings: _Reproduce, seed: int) -> dict[str, Any]:
    """Train one seed and measure every forget set of it."""
    from tqdm.auto import tqdm

    dm, model, trained, difficulty = _train_seed(settings, seed)
    size = max(5, round(settings.forget_size * settings.scale))
    privacy = trained.ledger.privacy_loss(4 * settings.alpha).double().cpu()
    _say(f"seed {seed}: difficulty scores (EL2N, GraNd, forgetting, confidence, curvature)")
    scores = _difficulty_scores(settings, model, trained, dm, difficulty)
    test = dm.test_dataset
    small_heldout = DataLoader(Subset(test, range(min(256, len(test)))), batch_size=256)  # type: ignore[arg-type]
    selections = _selections(settings, privacy, scores, size, seed)
    bar = tqdm(selections, desc=f"seed {seed}: forget sets", disable=not settings.progress)
    rows = []
    for kind, label, ids in bar:
        frdm = ForgetRetainDataModule(
            dm.train_dataset,  # type: ignore[arg-type]
            ids,
            heldout=dm.test_dataset,
            batch_size=settings.batch_size,
            seed=seed,
        )
        row = _forget_set_row(settings, seed, model, frdm, trained.ledger, small_heldout)
        rows.append({"seed": seed, "kind": kind, "group": label, **row})
        _say(
            f"seed {seed}: {label}: P_max={row['P_max']:.3g} barrier={row['barrier']:.3g} steps="
            + ", ".join(
                f"{m}={v['steps']}{'+' if v['censored'] else ''}" for m, v in row["methods"].items()
            )
        )
    return {
        "seed": seed,
        "num_train": dm.num_train,
        "forget_size": size,
        "train_seconds": round(trained.seconds, 1),
        "test_acc": evaluate_test_split(model, dm)["test_acc"],
        "spearman": correlation_table(privacy, scores)["privacy_loss"],
        "privacy": privacy.tolist(),
        "scores": {k: v.tolist() for k, v in scores.items()},
        "rows": rows,
    }


def _forget_set_row(
    settings: _Reproduce,
    seed: int,
    model: ClassifierModule,
    frdm: ForgetRetainDataModule,
    ledger: PrivacyLedger,
    small_heldout: DataLoader[Any],
) -> dict[str, Any]:
    """One forget set: its oracle, barrier, THEORY §5 budget and each method's steps."""
    oracle, oracle_seconds = retrain_oracle(model, frdm, epochs=settings.epochs, seed=seed + 100)
    oracle_metrics = evaluate_splits(oracle, frdm)
    order = 4 * settings.alpha
    constants = UnlearningConstants(
        alpha=settings.alpha,
        c_lsi=1.0,
        langevin_sigma=settings.noise_multiplier,  # the training σ (THEORY §5)
        lr=settings.unlearn_lr,
        target_epsilon=1.0,
    )
    ids = frdm.forget_ids
    return {
        "P_max": forget_privacy_loss(ledger, ids, order, "max"),
        "P_mean": forget_privacy_loss(ledger, ids, order, "mean"),
        # Reported beside the measured steps, never run: the bound's value even where it
        # exceeds one training run (the cap that protects `unlearn` does not apply).
        "budget_theory": compute_budget(ledger, frdm, constants=constants, max_steps=2**62),
        "barrier": forget_set_barrier(model, oracle, frdm),
        "original": evaluate_splits(model, frdm),
        "oracle": oracle_metrics,
        "oracle_seconds": round(oracle_seconds, 1),
        "methods": {
            method: _steps_to_oracle(
                settings, seed, model, frdm, method, oracle_metrics, small_heldout
            )
            for method in settings.methods
        },
    }


def _steps_to_oracle(
    settings: _Reproduce,
    seed: int,
    model: ClassifierModule,
    frdm: ForgetRetainDataModule,
    method: Method,
    oracle_metrics: dict[str, Any],
    small_heldout: DataLoader[Any],
) -> dict[str, Any]:
    """Unlearn until the forget set's mean loss is within τ of the oracle's (or the cap)."""
    oracle_loss = oracle_metrics["forget"]["loss"]
    stop = OracleMatchStopping(
        oracle_loss,
        settings.tau,
        settings.check_every,
        heldout_dataloader=small_heldout,  # only the forget loss matters for this rule
    )
    _, result, seconds = unlearn_forget_set(
        model,
        frdm,
        method=method,
        budget=settings.max_steps,
        lr=settings.unlearn_lr,
        stopping=stop,
        sgld_sigma=settings.sgld_sigma,
        progress=False,
        seed=seed,
    )
    checks = result.trajectory
    steps = -1
    if checks:
        forget_losses = [r["forget_loss"] for r in checks]
        at = [r["step"] for r in checks]
        steps = int(steps_to_unlearn(forget_losses, oracle_loss, settings.tau, steps=at))
    return {
        "steps": steps if steps >= 0 else settings.max_steps,
        "censored": steps < 0,
        "after": result.after,
        "seconds": round(seconds, 1),
        "trajectory": [(r["step"], r["forget_loss"]) for r in checks],
    }
