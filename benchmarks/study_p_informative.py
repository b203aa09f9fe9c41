"""What makes P informative: a first measurement of issue 14 on scikit-learn's digits.

For every training seed:

1. train an MLP with :class:`PerInstancePrivacyMonitor` under three accounting configurations
   (nominal sigma = 1 unclipped; ``max_grad_norm = 1``; sigma = the median per-example gradient
   norm of a one-epoch pilot, so that r = ||g|| / sigma is of order 1). The monitor only
   observes (nominal convention), so the three runs train the same model; the script checks it;
2. train K reference models on balanced random halves (``train_reference_models``) and read
   every example's OUT distribution of phi = log p_y - log(1 - p_y);
3. draw forget sets from quantile bins of the *mean rank over all compared scores* (so no score
   is favoured by the selection), retrain M oracles per set, and unlearn each set by
   fine-tuning R times with the forget set recorded at every step;
4. steps-to-unlearn, per set: first step from which the set's mean phi stays ``hold`` steps in
   the oracles' band (mean +- z sd of the M oracles' mean phi); per example: the same against
   its OUT band from the reference models. Runs that never arrive are right-censored.

Reported: Spearman(score, steps) with percentile bootstrap intervals for P (three
configurations), the trained model's loss and sum ||g||^2; Kaplan-Meier medians and fraction
censored of each score's top-quartile examples; U-LiRA and KLoM as second outcomes;
Spearman(P, sum ||g||^2) over the training set. Writes ``results.json`` and ``summary.md``.

Usage::

    nice -n 19 .venv/bin/python benchmarks/study_p_informative.py --scale tiny --output-dir out
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_unlearn.callbacks import PerInstancePrivacyMonitor
from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.data.modules import DigitsDataModule
from lightning_unlearn.data.splits import EpochSeededSampler, ForgetRetainDataModule
from lightning_unlearn.evaluation.functional import (
    average_ranks,
    binned_kl,
    bootstrap_spearman,
    first_hold_step,
    forget_sets_by_quantile,
    spearman,
    summarise_censored,
    tolerance_band,
)
from lightning_unlearn.models import MLPClassifier
from lightning_unlearn.unlearning import record_unlearning, train_oracle, train_reference_models
from lightning_unlearn.unlearning.reference_stats import score_model


@dataclasses.dataclass(frozen=True)
class Scale:
    subset: int | None  # training examples kept (None: all 1258)
    epochs: int
    k: int  # reference models
    n_bins: int
    size: int  # forget-set size
    oracles: int  # M
    runs: int  # R unlearning runs per set
    cap: int  # unlearning steps recorded
    hold: int
    seeds: int
    hidden: int
    boot: int


SCALES = {
    "smoke": Scale(240, 4, 6, 3, 4, 3, 1, 10, 2, 1, 32, 100),
    "tiny": Scale(None, 40, 8, 4, 10, 3, 2, 200, 5, 1, 128, 1000),
    "small": Scale(None, 40, 16, 6, 10, 3, 3, 300, 5, 3, 128, 2000),
    "full": Scale(None, 60, 32, 10, 20, 5, 5, 600, 10, 5, 256, 5000),
}
ORDER = 8  # P(x, 4 alpha) at alpha = 2 (THEORY §5)
BATCH, LR, UNLEARN_LR, Z = 64, 0.1, 0.1, 2.0
TRAINER = {"accelerator": "cpu", "devices": 1, "deterministic": True}
# Band lower edges per outcome (None: the band's own lower edge; -inf: one-sided).
OUTCOMES: dict[str, tuple[float | None, float | None]] = {
    "two_sided": (None, None),
    "one_sided": (-math.inf, -math.inf),
}


def _say(text: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {text}", flush=True)


def make_model(hidden: int) -> MLPClassifier:
    return MLPClassifier(input_dim=64, hidden=(hidden,), lr=LR)


def _fit(hidden: int, data: Any, epochs: int, seed: int, callbacks: list) -> MLPClassifier:
    pl.seed_everything(seed, verbose=False)  # before the model: same initialisation every run
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
    return model


def _monitor(sigma: float, clip: float | None) -> PerInstancePrivacyMonitor:
    return PerInstancePrivacyMonitor(
        noise_multiplier=sigma, max_grad_norm=clip, alphas=(2, ORDER), log_histograms=False
    )


def _train_scores(sc: Scale, train: IndexedDataset, seed: int) -> dict[str, Any]:
    """The three monitored runs, the trained model and its per-example scores."""
    pilot = _monitor(1.0, None)
    _fit(sc.hidden, train, 1, seed, [pilot])
    first_norms = pilot.ledger.sq_norm_sum.double().sqrt().cpu()
    sigma_scaled = float(first_norms.median())
    configs = {"nominal": (1.0, None), "clip1": (1.0, 1.0), "scaled": (sigma_scaled, None)}
    models, ledgers = {}, {}
    for name, (sigma, clip) in configs.items():
        monitor = _monitor(sigma, clip)
        model = _fit(sc.hidden, train, sc.epochs, seed, [monitor])
        models[name], ledgers[name] = model.eval(), monitor.ledger.to("cpu")
    ref = models["nominal"].state_dict()
    identical = all(
        all(torch.equal(ref[k], m.state_dict()[k]) for k in ref) for m in models.values()
    )
    _, loss, ids = score_model(models["nominal"], DataLoader(train, batch_size=512))
    train_loss = torch.empty(len(train), dtype=torch.float64)
    train_loss[ids.cpu()] = loss.double().cpu()
    scores = {f"P_{name}": ledgers[name].privacy_loss(ORDER).double() for name in configs}
    scores["train_loss"] = train_loss
    scores["sq_norm_sum"] = ledgers["nominal"].sq_norm_sum.double()
    return {
        "model": models["nominal"],
        "scores": scores,
        "sigma_scaled": sigma_scaled,
        "first_epoch_norm_quantiles": torch.quantile(
            first_norms, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
        ).tolist(),
        "identical_models": identical,
    }


def _measure_set(
    sc: Scale, seed: int, b: int, ids: torch.Tensor, ctx: dict[str, Any]
) -> dict[str, Any]:
    train, heldout, stats, model = ctx["train"], ctx["heldout"], ctx["stats"], ctx["model"]
    oracle_phi = []
    for m in range(sc.oracles):
        oseed = seed * 1000 + 10 * b + m + 1
        frdm = ForgetRetainDataModule(train, ids, heldout=heldout, batch_size=BATCH, seed=oseed)
        oracle = train_oracle(
            make_model(sc.hidden), frdm, seed=oseed, max_epochs=sc.epochs, **TRAINER
        )
        oracle_phi.append(score_model(oracle, frdm.forget_dataloader())[0].double())
    oracle_phi_t = torch.stack(oracle_phi)  # [M, E]
    band = tolerance_band(oracle_phi_t.mean(dim=1), rule="zscore", z=Z)
    targets = stats.targets(ids, metric="phi", rule="zscore", z=Z, min_models=3)
    runs, finals = [], []
    for r in range(sc.runs):
        # Runs differ by the retain set's shuffling (fine-tuning itself adds no noise).
        rseed = seed * 100 + r
        frdm = ForgetRetainDataModule(train, ids, heldout=heldout, batch_size=BATCH, seed=rseed)
        traj, _ = record_unlearning(
            model,
            frdm,
            max_steps=sc.cap,
            lr=UNLEARN_LR,
            seed=seed * 100 + r,
            trainer_kwargs=TRAINER,
        )
        record: dict[str, Any] = {}
        for side, (set_lo, ex_lo) in OUTCOMES.items():
            # "one_sided": arrived once phi is no higher than the band allows (no more
            # member-like than the oracles); overshooting below is not a failure to unlearn.
            set_lo = band.lower if set_lo is None else set_lo
            ex_lo = targets.band.lower if ex_lo is None else ex_lo
            s = first_hold_step(traj.set_metric("phi"), set_lo, band.upper, hold=sc.hold)
            e = first_hold_step(traj.phi.T, ex_lo, targets.band.upper, hold=sc.hold)
            record[side] = {
                "set_steps": int(s.steps),
                "set_arrived": bool(s.arrived),
                "example_steps": e.steps.tolist(),
                "example_arrived": e.arrived.tolist(),
            }
        finals.append(traj.phi[-1])
        runs.append(
            {
                **record,
                "set_phi_first_last": [float(traj.set_metric()[0]), float(traj.set_metric()[-1])],
                "ulira_final_mean": float(stats.lira_scores(traj.phi[-1], ids).mean()),
            }
        )
    bins = max(2, min(10, (sc.runs + sc.oracles) // 2))
    klom = binned_kl(torch.stack(finals), oracle_phi_t, num_bins=bins).mean()
    return {
        "seed": seed,
        "bin": b,
        "ids": ids.tolist(),
        "scores": {k: float(v[ids].mean()) for k, v in ctx["scores"].items()},
        "band": [float(band.lower), float(band.upper), float(band.center)],
        "oracle_set_phi": oracle_phi_t.mean(dim=1).tolist(),
        "ulira_initial_mean": float(stats.lira_scores(ctx["phi_trained"][ids], ids).mean()),
        "klom_final_mean": float(klom),
        "klom_bins": bins,
        "runs": runs,
    }


def _one_seed(sc: Scale, seed: int, out: Path) -> dict[str, Any]:
    dm = DigitsDataModule(batch_size=BATCH, seed=seed)
    dm.setup()
    x, y = dm.train_tensors()
    n = len(y) if sc.subset is None else min(sc.subset, len(y))
    train = IndexedDataset(TensorDataset(x[:n].clone(), y[:n].clone()))
    _say(f"seed {seed}: {n} digits, three monitored runs of {sc.epochs} epochs")
    trained = _train_scores(sc, train, seed)
    _say(f"seed {seed}: {sc.k} reference models")
    refs = train_reference_models(
        functools.partial(make_model, sc.hidden),
        train,
        out_dir=out / f"seed{seed}" / "reference",
        k=sc.k,
        seed=seed,
        batch_size=BATCH,
        trainer_kwargs={"max_epochs": sc.epochs, **TRAINER},
        progress=False,
    )
    stats = refs.statistics(DataLoader(train, batch_size=512))
    phi_trained = torch.empty(n, dtype=torch.float64)
    phi, _, ids = score_model(trained["model"], DataLoader(train, batch_size=512))
    phi_trained[ids.cpu()] = phi.double().cpu()
    scores = trained["scores"]
    composite = torch.stack([average_ranks(v) for v in scores.values()]).mean(dim=0)
    sets = forget_sets_by_quantile(composite, sc.n_bins, sc.size, seed=seed)
    ctx = {
        "train": train,
        "heldout": dm.test_dataset,
        "stats": stats,
        "model": trained["model"],
        "scores": scores,
        "phi_trained": phi_trained,
    }
    rows = []
    for b, forget_ids in enumerate(sets):
        _say(f"seed {seed}: forget set {b + 1}/{len(sets)}: {sc.oracles} oracles, {sc.runs} runs")
        rows.append(_measure_set(sc, seed, b, forget_ids.cpu(), ctx))
    return {
        "seed": seed,
        "num_train": n,
        "sigma_scaled": trained["sigma_scaled"],
        "first_epoch_norm_quantiles_10_50_90": trained["first_epoch_norm_quantiles"],
        "identical_models_across_configs": trained["identical_models"],
        "spearman_over_training_set": {
            name: spearman(scores[name], scores["sq_norm_sum"])
            for name in scores
            if name.startswith("P_")
        },
        "example_scores": {k: v.tolist() for k, v in scores.items()},
        "rows": rows,
    }


def _ci(x: list[float], y: list[float], boot: int) -> dict[str, float]:
    ci = bootstrap_spearman(torch.tensor(x), torch.tensor(y), num_resamples=boot, seed=0)
    return {"rho": ci.estimate, "low": ci.low, "high": ci.high}


def summarise(per_seed: list[dict[str, Any]], sc: Scale) -> dict[str, Any]:
    """Both outcomes (two-sided and one-sided bands), see :func:`summarise_outcome`."""
    return {side: summarise_outcome(per_seed, sc, side) for side in OUTCOMES}


def summarise_outcome(per_seed: list[dict[str, Any]], sc: Scale, side: str) -> dict[str, Any]:
    """Spearman with bootstrap intervals, censoring and top-group Kaplan-Meier medians."""
    names = list(per_seed[0]["example_scores"])
    set_y, set_x = [], {k: [] for k in names}
    ex_y, ex_x = [], {k: [] for k in names}
    ex_times, ex_arrived = [], []
    set_arrived = []
    for seed in per_seed:
        for row in seed["rows"]:
            # Censored runs enter at their censoring time (cap - hold, the same for every run):
            # tied at the top rank, which is all that is known of them.
            runs = [r[side] for r in row["runs"]]
            set_y.append(sum(r["set_steps"] for r in runs) / len(runs))
            set_arrived += [r["set_arrived"] for r in runs]
            for k in names:
                set_x[k].append(row["scores"][k])
            for j, sid in enumerate(row["ids"]):
                times = [r["example_steps"][j] for r in runs]
                ex_y.append(sum(times) / len(times))
                ex_times.append(times)
                ex_arrived.append([r["example_arrived"][j] for r in runs])
                for k in names:
                    ex_x[k].append(seed["example_scores"][k][sid])
    out: dict[str, Any] = {
        "per_set": {k: _ci(set_x[k], set_y, sc.boot) for k in names},
        "per_example": {k: _ci(ex_x[k], ex_y, sc.boot) for k in names},
        "num_sets": len(set_y),
        "num_examples": len(ex_y),
        "set_runs_censored": 1.0 - sum(set_arrived) / len(set_arrived),
        "example_runs_censored": 1.0 - sum(map(sum, ex_arrived)) / sum(map(len, ex_arrived)),
        "top_quartile": {},
    }
    all_t = torch.tensor(ex_times, dtype=torch.float64)
    all_a = torch.tensor(ex_arrived)
    out["all_examples_km"] = summarise_censored(all_t, all_a)
    for k in names:
        score = torch.tensor(ex_x[k], dtype=torch.float64)
        top = score >= torch.quantile(score, 0.75)
        out["top_quartile"][k] = summarise_censored(all_t[top], all_a[top])
    return out


def _fmt(v: float) -> str:
    return "not reached" if math.isinf(v) else ("n/a" if v != v else f"{v:.3g}")


def _outcome_lines(sm: dict[str, Any], side: str) -> list[str]:
    lines = [
        f"## Outcome `{side}`",
        "",
        "| score | per-set Spearman [95% CI] | per-example Spearman [95% CI] |",
        "|---|---|---|",
    ]
    for k in sm["per_set"]:
        a, b = sm["per_set"][k], sm["per_example"][k]
        lines.append(
            f"| {k} | {a['rho']:.2f} [{a['low']:.2f}, {a['high']:.2f}] | "
            f"{b['rho']:.2f} [{b['low']:.2f}, {b['high']:.2f}] |"
        )
    lines += [
        "",
        f"Censored: {sm['set_runs_censored']:.0%} of set runs, "
        f"{sm['example_runs_censored']:.0%} of (example, run) pairs. All examples: KM median "
        f"{_fmt(sm['all_examples_km']['km_median'])} steps.",
        "",
        "| top quartile of | KM median steps | fraction censored | n (example, run) |",
        "|---|---|---|---|",
    ]
    for k, v in sm["top_quartile"].items():
        lines.append(
            f"| {k} | {_fmt(v['km_median'])} | {v['fraction_censored']:.2f} | {int(v['n'])} |"
        )
    return [*lines, ""]


def _set_lines(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Forget sets",
        "",
        "| seed | bin | mean P_nominal | oracle band (mean phi) | phi step 0 -> last "
        "| steps two-sided / one-sided | U-LiRA before -> after | KLoM |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed in results["seeds"]:
        for row in seed["rows"]:
            lo, hi, _ = row["band"]
            r0 = row["runs"][0]
            steps = " ; ".join(
                "/".join(
                    f"{r[side]['set_steps']}{'' if r[side]['set_arrived'] else '+'}"
                    for side in OUTCOMES
                )
                for r in row["runs"]
            )
            after = sum(r["ulira_final_mean"] for r in row["runs"]) / len(row["runs"])
            lines.append(
                f"| {seed['seed']} | {row['bin'] + 1} | {row['scores']['P_nominal']:.3g} | "
                f"[{lo:.2f}, {hi:.2f}] | {r0['set_phi_first_last'][0]:.2f} -> "
                f"{r0['set_phi_first_last'][1]:.2f} | {steps} | "
                f"{row['ulira_initial_mean']:.2f} -> {after:.2f} | {row['klom_final_mean']:.2f} |"
            )
    return [*lines, "", "(`+`: censored at cap - hold; one entry per run.)", ""]


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    first = next(iter(results["summary"].values()))
    lines = [
        f"# First measurement of issue 14 (scale `{s['scale']}`)",
        "",
        f"Command: `{results['command']}`. Digits MLP (hidden {s['hidden']}), "
        f"{s['epochs']} epochs, {s['seeds']} seed(s); {s['k']} reference models; "
        f"{first['num_sets']} forget sets of {s['size']} from {s['n_bins']} bins of the mean "
        f"rank over all scores; {s['oracles']} oracles per set; {s['runs']} fine-tuning run(s) "
        f"per set, {s['cap']} steps recorded at every step; hold window {s['hold']}; bands: "
        f"mean ± {Z} sd (set: the oracles' mean phi; example: its OUT reference models). "
        "`two_sided`: the metric stays inside the band; `one_sided`: phi stays at or below the "
        "band's upper edge.",
        "",
    ]
    for side, sm in results["summary"].items():
        lines += _outcome_lines(sm, side)
    lines += _set_lines(results)
    lines += [
        "| seed | sigma_scaled | identical models "
        "| Spearman(P, sum g^2) nominal / clip1 / scaled |",
        "|---|---|---|---|",
    ]
    for seed in results["seeds"]:
        sp = seed["spearman_over_training_set"]
        lines.append(
            f"| {seed['seed']} | {seed['sigma_scaled']:.3g} | "
            f"{seed['identical_models_across_configs']} | {sp['P_nominal']:.3f} / "
            f"{sp['P_clip1']:.3f} / {sp['P_scaled']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def run(scale: str, output_dir: str | Path, seed0: int = 0) -> dict[str, Any]:
    """Run the study at ``scale``; writes and returns the results (timings under "timing")."""
    sc = SCALES[scale]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    per_seed = [_one_seed(sc, seed0 + s, out) for s in range(sc.seeds)]
    results = {
        "command": f"benchmarks/study_p_informative.py --scale {scale} --seed {seed0}",
        "settings": {"scale": scale, **dataclasses.asdict(sc), "order": ORDER, "z": Z},
        "seeds": per_seed,
        "summary": summarise(per_seed, sc),
    }
    slim = {
        **results,
        "seeds": [{k: v for k, v in s.items() if k != "example_scores"} for s in per_seed],
    }
    (out / "results.json").write_text(json.dumps(slim, indent=2))
    (out / "summary.md").write_text(markdown(results))
    slim["timing"] = {"seconds": round(time.perf_counter() - start, 1)}
    (out / "timing.json").write_text(json.dumps(slim["timing"]))
    return slim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    parser.add_argument("--output-dir", default="outputs/study_p_informative")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = run(args.scale, args.output_dir, args.seed)
    _say(f"done in {results['timing']['seconds']} s")
    print((Path(args.output_dir) / "summary.md").read_text())


if __name__ == "__main__":
    main()
