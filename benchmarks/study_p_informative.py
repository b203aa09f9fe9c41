"""What makes P informative: the study of issue 14 on scikit-learn's digits.

For every training seed (``--scale`` sets how many, and every size below):

1. one monitored training run (the library defaults: online estimator, nominal sigma = 1, no
   clipping) records every example's gradient norm in every epoch; the option grid of
   deliverable 3 (sigma, clip C, alpha, Hölder composition) is computed from those norms and
   checked against the monitor's own ledger; a second run gives the sweep estimator;
   baselines: trained loss, sum ||g||^2, EL2N and GraNd after epoch 1, forgetting events,
   1 - mean confidence, input curvature (``_study_train``);
2. K reference models on balanced halves, each *continued* for the unlearning cap on its own
   half with its OUT half recorded at every step: per-example targets at matched compute;
3. forget sets from quantile bins of the mean rank over all baseline scores; per set M oracles
   on the retain set, continued like the unlearned model, and unlearning by fine-tuning, SGLD
   and l1-sparse with the set recorded at every step (``_study_sets``);
4. Spearman(score, steps) per set and per example with two-stage bootstrap intervals over
   seeds and sets, Kaplan-Meier medians of each score's top group, loss barriers against P,
   the option study, every-step vs every-10-steps checks (``_study_summary``);
5. ``results.json``, ``summary.md`` and PNG plots in the output directory (``_study_report``).

Usage::

    nice -n 10 .venv/bin/python benchmarks/study_p_informative.py --scale small --output-dir out
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _study_report import markdown, plots
from _study_sets import METHOD_KWARGS, UNLEARN_LR, Z, measure_set
from _study_summary import summarise
from _study_train import BATCH, TRAINER, make_model, train_and_score

from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.data.modules import DigitsDataModule
from lightning_unlearn.evaluation.functional import (
    average_ranks,
    forget_sets_by_quantile,
    spearman,
)
from lightning_unlearn.unlearning import train_reference_models
from lightning_unlearn.unlearning.reference_trajectory import (
    continue_reference_models,
)


@dataclasses.dataclass(frozen=True)
class Scale:
    subset: int | None  # training examples kept (None: all 1258)
    epochs: int
    k: int  # reference models
    n_bins: int  # forget sets per seed
    size: int  # forget-set size
    oracles: int  # M
    runs: int  # fine-tuning runs per set
    other_runs: int  # SGLD / l1-sparse runs per set
    cap: int  # unlearning steps recorded
    hold: int
    seeds: int
    hidden: int
    boot: int
    methods: tuple[str, ...] = tuple(METHOD_KWARGS)
    # Continue the oracles with every method (True) or with fine-tuning only, the SGLD and
    # l1-sparse runs then judged against fine-tuned oracles (False: cheaper, an approximation).
    matched_methods: bool = True
    # Fraction of training labels replaced by a random other class (seeded): examples the
    # model can only fit by memorising them, the regime where unlearning has work to do.
    label_noise: float = 0.0


SCALES = {
    "smoke": Scale(120, 2, 6, 3, 3, 3, 1, 1, 6, 1, 1, 16, 50, ("finetune", "sgld")),
    "tiny": Scale(None, 20, 8, 5, 10, 3, 2, 1, 100, 5, 1, 128, 1000, matched_methods=False),
    "small": Scale(None, 20, 8, 5, 10, 3, 2, 1, 100, 5, 3, 128, 1000, matched_methods=False),
    # small with 5 seeds (seeds 0-2 read back from a small run in the same directory)
    "medium": Scale(None, 20, 8, 5, 10, 3, 2, 1, 100, 5, 5, 128, 1000, matched_methods=False),
    # small with 10 % label noise and 30 epochs: a memorising model
    "noisy": Scale(
        None, 30, 8, 5, 10, 3, 2, 1, 100, 5, 3, 128, 1000, matched_methods=False, label_noise=0.1
    ),
    "default": Scale(None, 30, 8, 8, 10, 3, 2, 1, 150, 5, 5, 128, 1000),
    "full": Scale(None, 60, 32, 10, 20, 5, 5, 3, 600, 10, 5, 256, 5000),
}


def _say(text: str) -> None:
    print(f"[study {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _one_seed(sc: Scale, seed: int, out: Path) -> dict[str, Any]:
    dm = DigitsDataModule(batch_size=BATCH, seed=seed)
    dm.setup()
    x, y = dm.train_tensors()
    n = len(y) if sc.subset is None else min(sc.subset, len(y))
    labels = y[:n].clone()
    noisy = torch.zeros(n, dtype=torch.bool)
    if sc.label_noise > 0:
        generator = torch.Generator().manual_seed(seed + 7_777)
        picked = torch.randperm(n, generator=generator)[: round(sc.label_noise * n)]
        shift = torch.randint(1, 10, (picked.numel(),), generator=generator)
        labels[picked] = (labels[picked] + shift) % 10  # always another class
        noisy[picked] = True
    train = IndexedDataset(TensorDataset(x[:n].clone(), labels))
    _say(f"seed {seed}: {n} digits, monitored runs of {sc.epochs} epochs")
    trained = train_and_score(sc.hidden, sc.epochs, train, seed)
    _say(f"seed {seed}: {sc.k} reference models, continued for {sc.cap} steps")
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
    ref_traj = continue_reference_models(
        refs,
        train,
        max_steps=sc.cap,
        batch_size=BATCH,
        seed=seed * 10_000,
        trainer_kwargs=TRAINER,
        lr=UNLEARN_LR,
    )
    scores = {**trained["baselines"], **{f"opt:{k}": v for k, v in trained["options"].items()}}
    selection = [k for k in trained["baselines"] if k != "P_sweep"]
    composite = torch.stack([average_ranks(scores[k]) for k in selection]).mean(dim=0)
    sets = forget_sets_by_quantile(composite, sc.n_bins, sc.size, seed=seed)
    ctx = {"train": train, "model": trained["model"], "scores": scores, "ref_traj": ref_traj}
    rows = []
    for b, forget_ids in enumerate(sets):
        _say(f"seed {seed}: forget set {b + 1}/{len(sets)}")
        rows.append(measure_set(sc, seed, b, forget_ids.cpu(), ctx))
    base = trained["baselines"]
    return {
        "seed": seed,
        "num_train": n,
        "noisy_ids": torch.nonzero(noisy).flatten().tolist(),
        "sigma_scaled": trained["sigma_scaled"],
        "first_epoch_norm_quantiles_10_50_90": trained["first_epoch_norm_quantiles"],
        "offline_vs_monitor_max_rel_diff": trained["offline_vs_monitor_max_rel_diff"],
        "sweep_run_same_model": trained["sweep_run_same_model"],
        "spearman_with_sq_norm_sum": {
            k: spearman(v, base["sq_norm_sum"]) for k, v in scores.items() if k != "sq_norm_sum"
        },
        "example_scores": {k: v.tolist() for k, v in scores.items()},
        "rows": rows,
    }


def _cached_seed(sc: Scale, seed: int, out: Path) -> dict[str, Any]:
    """One seed's raw results, read back from ``seed<k>/raw.json`` when a run with the same
    per-seed settings wrote it (an interrupted study resumes there; ``tiny`` reads seed 0 of
    ``small``), else measured and written."""
    path = out / f"seed{seed}" / "raw.json"
    settings = json.loads(json.dumps(dataclasses.asdict(sc)))

    defaults = {
        f.name: f.default for f in dataclasses.fields(Scale) if f.default is not dataclasses.MISSING
    }
    defaults = json.loads(json.dumps(defaults))  # tuples as lists, as in the saved file

    def per_seed(d: dict[str, Any]) -> dict[str, Any]:
        # fields added later take their defaults (what older runs did)
        return {k: v for k, v in {**defaults, **d}.items() if k not in ("seeds", "boot")}

    if path.exists():
        saved = json.loads(path.read_text())
        if per_seed(saved.get("settings", {})) == per_seed(settings):
            _say(f"seed {seed}: read back from {path}")
            return saved["result"]
    result = _one_seed(sc, seed, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, json.dumps({"settings": settings, "result": result}))
    return result


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def run(scale: str, output_dir: str | Path, seed0: int = 0, plot: bool = True) -> dict[str, Any]:
    """Run the study at ``scale``; writes and returns the results (timings under "timing")."""
    sc = SCALES[scale]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    per_seed = [_cached_seed(sc, seed0 + s, out) for s in range(sc.seeds)]
    results = {
        "command": f"benchmarks/study_p_informative.py --scale {scale} --seed {seed0}",
        "settings": {
            "scale": scale,
            **dataclasses.asdict(sc),
            "z": Z,
            "unlearn_lr": UNLEARN_LR,
            "check_interval": 1,
        },
        "seeds": per_seed,
        "summary": summarise(per_seed, sc),
    }
    slim = {
        **results,
        "seeds": [{k: v for k, v in s.items() if k != "example_scores"} for s in per_seed],
    }
    _atomic_write(out / "results.json", json.dumps(slim, indent=2))
    _atomic_write(out / "summary.md", markdown(results))
    if plot:
        plots(results, out)
    slim["timing"] = {"seconds": round(time.perf_counter() - start, 1)}
    _atomic_write(out / "timing.json", json.dumps(slim["timing"]))
    return slim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="default")
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
