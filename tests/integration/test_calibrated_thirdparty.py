"""The calibrated path of issue 15 on models users train: a tiny Hugging Face BERT (built from a
config, nothing downloaded) taking dict batches, and an LSTM sequence classifier.

`train_reference_models` -> `ReferenceModels.statistics` -> `reference_heldout_values` ->
`OutRule.from_reference` -> `verify_forget_set` / `calibrated_unlearn`, run for real (K = 4,
every example OUT of 2 models), and every per-example number checked against a reference
computed here: phi and loss from batch-size-1 float64 forward passes of each model, the OUT laws,
held-out maps, null rates, tolerances and z-scores from the documented formulas
(`evaluation/functional/out_score.py`) in numpy. Batch formats the default adapter cannot read
give named errors, and `batch_adapter=` reaches every step of the path.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from lightning_unlearn import PerInstancePrivacyMonitor, UnlearningModule
from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.errors import BatchFormatError, MissingSampleIdError
from lightning_unlearn.evaluation.functional.adapters import BatchAdapter, ExampleOutputs
from lightning_unlearn.unlearning import ReferenceModels, train_reference_models
from lightning_unlearn.unlearning.calibrated_stopping import (
    CalibratedStopping,
    OutRule,
    reference_heldout_values,
)
from lightning_unlearn.unlearning.calibration_fit import calibrate_budget
from lightning_unlearn.unlearning.request_report import calibrated_unlearn, verify_forget_set
from tests.integration.test_hf_recipe import VOCAB, BertClassifier, Sentences
from tests.unlearning._calibration_support import QUIET, TRAINER

transformers = pytest.importorskip("transformers")

K, NU0, THRESHOLD, LEVEL = 4, 2.0, 2.0, 0.05
# The calibration run: steps, probe size, and a method with a forget term (random labels on
# the probe), under which the memorised members of these tiny models look OUT after 1-21 steps.
CAP, PROBE, CAL_METHOD = 30, 8, "random_label"
FORGET = [1, 5, 9, 20, 33]
# Mislabelled examples: the forget set and a few others. A model that trained on them memorises
# their flipped label, one that did not predicts the rule's: members are plainly visible.
FLIPPED = [*FORGET, 12, 27, 40]
# The package scores in float32, the references below in float64. Through these shallow
# networks (|phi| <= ~11, a few hundred accumulations per logit, float32 eps 6e-8) rounding
# moves phi and the loss by ~1e-6 (measured: <= 1.6e-6); 2e-5 bounds them with a margin.
PHI_TOL = 2e-5


# ------------------------------------------------------------------ the two user modules
class RuleSentences(Sentences):
    """`Sentences` labelled by whether the first token is below ``VOCAB / 2``, with ``flipped``
    examples mislabelled."""

    def __init__(self, n: int, seed: int = 0, flipped: tuple[int, ...] = ()) -> None:
        super().__init__(n, seed)
        self.labels = (self.ids[:, 0] < VOCAB // 2).long()
        self.labels[list(flipped)] = 1 - self.labels[list(flipped)]


class MemorisingBert(BertClassifier):
    """The recipe's BERT with Adam, so a few epochs memorise 48 sentences."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def _bert_logits(model: nn.Module, item: dict[str, Tensor]) -> Tensor:
    out = model.model(
        input_ids=item["input_ids"][None], attention_mask=item["attention_mask"][None]
    )
    return out.logits[0]


RNN_VOCAB, RNN_T, RNN_CLASSES = 12, 6, 3


class Tokens(TensorDataset):
    """``(tokens [T], label)`` pairs labelled by the last token modulo 3, ``flipped`` ones
    mislabelled."""

    def __init__(self, n: int, seed: int = 0, flipped: tuple[int, ...] = ()) -> None:
        x = torch.randint(0, RNN_VOCAB, (n, RNN_T), generator=torch.Generator().manual_seed(seed))
        y = x[:, -1] % RNN_CLASSES
        y[list(flipped)] = (y[list(flipped)] + 1) % RNN_CLASSES
        super().__init__(x, y)


class LSTMClassifier(pl.LightningModule):
    """Embedding -> LSTM -> linear head on the last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(RNN_VOCAB, 8)
        self.rnn = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, RNN_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        _, (h, _) = self.rnn(self.embed(x))
        return self.head(h[-1])

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        # `train_reference_models` wraps the data in `IndexedDataset`: a third field (the id).
        x, y = batch[0], batch[1]
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=2e-2)


def _rnn_logits(model: nn.Module, item: tuple[Tensor, Tensor]) -> Tensor:
    return model(item[0][None])[0]


def _label(item: Any) -> int:
    return int(item["labels"] if isinstance(item, dict) else item[1])


# ------------------------------------------------------------------ independent references
def _reference_phi_loss(
    module: nn.Module, data: Any, logits_fn: Callable[[nn.Module, Any], Tensor]
) -> tuple[np.ndarray, np.ndarray]:
    """phi = log p_y - log(1 - p_y) and -log p_y of every example, one at a time, in float64."""
    model = copy.deepcopy(module).double().eval()
    phi, loss = [], []
    with torch.no_grad():
        for i in range(len(data)):
            item = data[i]
            p = torch.softmax(logits_fn(model, item).double(), dim=-1)[_label(item)]
            phi.append(float(torch.log(p) - torch.log1p(-p)))
            loss.append(float(-torch.log(p)))
    return np.array(phi), np.array(loss)


def _law(values: np.ndarray, mask: np.ndarray, pooled: float | None = None) -> dict[str, Any]:
    """THEORY §6 OUT law: mean, variance shrunk towards the pooled one (nu0 pseudo-models)."""
    n = mask.sum(axis=0)
    mean = np.array([values[mask[:, i], i].mean() if n[i] else np.nan for i in range(len(n))])
    own = np.array(
        [np.var(values[mask[:, i], i], ddof=1) if n[i] >= 2 else np.nan for i in range(len(n))]
    )
    pooled = float(np.nanmean(own)) if pooled is None else pooled
    dof = np.maximum(n - 1, 0)
    var = (NU0 * pooled + dof * np.nan_to_num(own)) / (NU0 + dof)
    return {"mean": mean, "std": np.sqrt(var), "n": n, "pooled": pooled}


def _map(v: np.ndarray, law: dict[str, Any]) -> tuple[float, float, float]:
    """Weighted least-squares line v ~ a + b mu, and the MAD of the standardised residuals."""
    s = law["std"] * np.sqrt(1 + 1 / law["n"])
    w = s**-2
    mu = law["mean"]
    wm, wv = np.average(mu, weights=w), np.average(v, weights=w)
    b = np.sum(w * (mu - wm) * (v - wv)) / np.sum(w * (mu - wm) ** 2)
    a = wv - b * wm
    r = (v - a - b * mu) / s
    c = np.median(np.abs(r - np.median(r))) / scipy.stats.norm.ppf(0.75)
    return float(a), float(b), max(float(c), 1e-3)


def _z(v: np.ndarray, law: dict[str, Any], hmap: tuple[float, float, float]) -> np.ndarray:
    a, b, c = hmap
    return (v - (a + b * law["mean"])) / (c * law["std"] * np.sqrt(1 + 1 / law["n"]))


def _null_rates(values: np.ndarray, out: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Each model's rate of OUT examples scored above the threshold against the other OUT
    models, read through its own held-out map against the other models' held-out law."""
    pooled = _law(values, out)["pooled"]
    rates = []
    for j in range(len(values)):
        others = out.copy()
        others[j] = False
        law = _law(values, others, pooled)
        rest = np.delete(held, j, axis=0)
        z = _z(values[j], law, _map(held[j], _law(rest, np.ones_like(rest, dtype=bool))))
        rates.append(float(np.mean(z[out[j]] > THRESHOLD)))
    return np.array(rates)


def _flag_tolerance(rates: np.ndarray, size: int) -> int:
    cdf = np.mean([scipy.stats.binom.cdf(np.arange(size + 1), size, r) for r in rates], axis=0)
    return int(np.nonzero(cdf >= 1 - LEVEL - 1e-12)[0][0])


def _reference_verdict(
    model: nn.Module, data: Any, heldout: Any, logits_fn: Any, law: dict[str, Any],
    held_law: dict[str, Any], rates: np.ndarray,
) -> dict[str, Any]:  # fmt: skip
    """The OUT verification of `model` on FORGET, every number computed here."""
    v = _reference_phi_loss(model, data, logits_fn)[0][FORGET]
    hmap = _map(_reference_phi_loss(model, heldout, logits_fn)[0], held_law)
    forget_law = {key: law[key][FORGET] for key in ("mean", "std", "n")}
    z = _z(v, forget_law, hmap)
    return {"z": z, "map": hmap, "tolerance": _flag_tolerance(rates, len(FORGET))}


def _assert_verdict(got: dict[str, Any], ref: dict[str, Any], rule: OutRule) -> None:
    z = ref["z"]
    # z divides phi errors (<= PHI_TOL, three of them: value, map, mean) by c * s, >= 1 here
    # (asserted): 10 * PHI_TOL bounds it (measured: <= 1.2e-7).
    assert ref["map"][2] * float(rule.law.std.min()) >= 1.0
    tol = 10 * PHI_TOL
    assert got["map"] == pytest.approx(
        dict(zip(("intercept", "slope", "scale"), ref["map"], strict=True)), abs=tol
    )
    assert got["mean_score"] == pytest.approx(float(z.mean()), abs=tol)
    assert got["flagged_ids"] == [FORGET[e] for e in np.nonzero(z > THRESHOLD)[0]]
    assert got["under_ids"] == [FORGET[e] for e in np.nonzero(z < -THRESHOLD)[0]]
    assert got["flagged"] == int((z > THRESHOLD).sum())
    assert got["tolerance"] == ref["tolerance"]
    assert got["mean_tolerance"] == rule.mean_tolerance(len(FORGET))
    assert got["satisfied"] == (
        got["flagged"] <= got["tolerance"] and z.mean() <= got["mean_tolerance"]
    )


# ------------------------------------------------------------------ the path, end to end
def _fit(
    module: pl.LightningModule, data: Any, epochs: int, monitor: pl.Callback | None = None
) -> pl.LightningModule:
    loader = DataLoader(data, batch_size=8, shuffle=True)
    callbacks = [] if monitor is None else [monitor]
    pl.Trainer(**{**QUIET, "max_epochs": epochs, "callbacks": callbacks}).fit(
        module, train_dataloaders=loader
    )
    return module.eval()


class _Snapshots(pl.Callback):
    """The unlearned module's weights before the first step and after every step, and the
    labels of every forget and retain batch it trained on."""

    def __init__(self) -> None:
        self.states: list[dict[str, Tensor]] = []
        self.seen: dict[str, list[Tensor]] = {"forget": [], "retain": []}

    def _keep(self, pl_module: pl.LightningModule) -> None:
        self.states.append(copy.deepcopy(pl_module.module.state_dict()))  # type: ignore[union-attr]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._keep(pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._keep(pl_module)
        for part in ("forget", "retain"):
            got = batch[part].batch if part == "forget" else batch[part]
            self.seen[part].append(_tokens(got))


def _tokens(batch: Any) -> Tensor:
    """The token rows of a batch of either format."""
    return batch["input_ids"] if isinstance(batch, dict) else batch[0]


def _rows(tokens: Tensor) -> set[tuple[int, ...]]:
    return {tuple(row.tolist()) for row in tokens}


def _reference_probe_steps(
    module: nn.Module, states: list[dict[str, Tensor]], data: Any, heldout: Any,
    logits_fn: Any, probe: np.ndarray, law: dict[str, Any], held_law: dict[str, Any], hold: int,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Each probe example's z-score at every snapshot (float64, one example at a time), the
    first step from which it stays <= THRESHOLD for `hold` more steps, censored at the last
    step minus `hold`."""
    probe_law = {key: law[key][probe] for key in ("mean", "std", "n")}
    zs = []
    for state in states:
        model = copy.deepcopy(module)
        model.load_state_dict(state)
        v = _reference_phi_loss(model, data, logits_fn)[0][probe]
        hmap = _map(_reference_phi_loss(model, heldout, logits_fn)[0], held_law)
        zs.append(_z(v, probe_law, hmap))
    z = np.stack(zs)  # [T, P]
    last = len(states) - 1
    steps, arrived = np.full(len(probe), last - hold), np.zeros(len(probe), dtype=bool)
    for e in range(len(probe)):
        for k in range(last - hold + 1):
            if (z[k : k + hold + 1, e] <= THRESHOLD).all():
                steps[e], arrived[e] = k, True
                break
    return {"z": z, "steps": steps, "arrived": arrived, "flagged": z[0] > THRESHOLD}


def _check_calibrated_path(
    make: Callable[[], pl.LightningModule], data: Any, heldout: Any, logits_fn: Any,
    epochs: int, tmp_path: Path, lr: float,
) -> dict[str, Any]:  # fmt: skip
    refs = train_reference_models(
        make, data, out_dir=tmp_path / "refs", k=K, seed=0, batch_size=8,
        trainer_kwargs={"max_epochs": epochs, **TRAINER}, progress=False,
    )  # fmt: skip
    stats = refs.statistics(DataLoader(IndexedDataset(data), batch_size=16))
    dm = ForgetRetainDataModule(data, FORGET, heldout=heldout, batch_size=8, seed=0)
    held = reference_heldout_values(refs, dm.heldout_dataloader())
    rule = OutRule.from_reference(stats, heldout=held)

    # Every model's phi and loss on every example, against batch-size-1 float64 passes.
    table = [_reference_phi_loss(m, data, logits_fn) for m in refs.modules]
    phi, loss = np.stack([t[0] for t in table]), np.stack([t[1] for t in table])
    np.testing.assert_allclose(stats.phi.numpy(), phi, rtol=0, atol=PHI_TOL)
    np.testing.assert_allclose(stats.loss.numpy(), loss, rtol=0, atol=PHI_TOL)
    held_phi = np.stack([_reference_phi_loss(m, heldout, logits_fn)[0] for m in refs.modules])
    assert held[1].tolist() == list(range(len(heldout)))
    np.testing.assert_allclose(held[0].numpy(), held_phi, rtol=0, atol=PHI_TOL)

    # The rule's OUT laws, held-out law and null rates, from the documented formulas.
    in_mask = refs.in_mask.numpy()
    assert (in_mask.sum(axis=0) == K // 2).all()
    law, held_law = _law(phi, ~in_mask), _law(held_phi, np.ones_like(held_phi, dtype=bool))
    assert rule.law.n.tolist() == law["n"].tolist()
    np.testing.assert_allclose(rule.law.mean.numpy(), law["mean"], atol=PHI_TOL)
    np.testing.assert_allclose(rule.law.std.numpy(), law["std"], atol=10 * PHI_TOL)
    np.testing.assert_allclose(rule.heldout_law.mean.numpy(), held_law["mean"], atol=PHI_TOL)
    np.testing.assert_allclose(rule.heldout_law.std.numpy(), held_law["std"], atol=10 * PHI_TOL)
    rates = _null_rates(phi, ~in_mask, held_phi)
    np.testing.assert_array_equal(rule.rates.numpy(), rates)

    # The tested model (trained on all of the data): verification and the request's report.
    pl.seed_everything(0, verbose=False)
    monitor = PerInstancePrivacyMonitor(noise_multiplier=1.0)
    model = _fit(make(), data, epochs, monitor)
    ledger = monitor.ledger
    ref_before = _reference_verdict(model, data, heldout, logits_fn, law, held_law, rates)
    before = verify_forget_set(rule, model, dm)
    _assert_verdict(before, ref_before, rule)
    assert not before["satisfied"]  # memorised: the request has work to do
    student, report = calibrated_unlearn(
        model, dm, rule, steps=3, retrain_steps=100, hold=1, lr=lr, trainer_kwargs=TRAINER
    )
    assert report.verification_before == before
    assert report.ran
    assert report.steps_used >= 1
    assert student is not None
    ref_after = _reference_verdict(student, data, heldout, logits_fn, law, held_law, rates)
    _assert_verdict(report.verification_after, ref_after, rule)
    moved = [
        not torch.equal(a, b) for a, b in zip(student.parameters(), model.parameters(), strict=True)
    ]
    assert any(moved)  # the run changed the model (a deep copy: `model` itself is untouched)

    # The budget calibration (deliverable 2) on this model family: one run of reference model
    # 0 on a probe of its members, every per-example step recomputed from its weights (all
    # probe points in the fit, `hurdle=False`: the hurdle would keep the few flagged ones).
    snapshots = _Snapshots()
    cal = calibrate_budget(
        refs, data, ledger, rule, cap=CAP, hold=1, probe_size=PROBE, heldout=heldout,
        batch_size=8, num_models=1, seed=0, hurdle=False, method=CAL_METHOD,
        trainer_kwargs={**TRAINER, "callbacks": [snapshots]}, lr=lr,
    )  # fmt: skip
    assert len(snapshots.states) == CAP + 1  # before the first step and after each of CAP
    p = ledger.privacy_loss(8).double().numpy()
    members = np.nonzero(in_mask[0])[0]
    ranked = members[np.argsort(p[members], kind="stable")]
    probe = np.unique(ranked[np.round(np.linspace(0, len(ranked) - 1, PROBE)).astype(int)])
    # It ascended on the probe, and trained on the model's other members: never on an example
    # reference model 0 did not train on.
    everything = torch.stack([_tokens(data[i]) for i in range(len(data))])
    assert len(_rows(everything)) == len(data)  # rows identify the examples
    forget_seen = _rows(torch.cat(snapshots.seen["forget"]))
    retain_seen = _rows(torch.cat(snapshots.seen["retain"]))
    assert forget_seen == _rows(everything[probe])
    others = np.setdiff1d(members, probe)
    assert retain_seen == _rows(everything[others])  # CAP steps cover every retain batch
    ref = _reference_probe_steps(
        refs.modules[0], snapshots.states, data, heldout, logits_fn, probe, law, held_law, 1
    )
    # No score within rounding of the threshold, so the float32 path must take the same steps.
    assert np.abs(ref["z"] - THRESHOLD).min() > 10 * PHI_TOL
    assert ref["flagged"].any()  # some probe members look trained on: there is work to time
    assert (ref["arrived"] & (ref["steps"] > 0)).any()  # and some of them arrive on the way
    steps = np.where(ref["arrived"], ref["steps"], CAP).astype(float)
    assert np.ptp(np.log(p[probe])) > 0.1
    a, b = np.polyfit(np.log(p[probe]), steps, 1)
    assert max(abs(a), abs(b)) < 100
    assert cal.num_points == len(probe)
    assert cal.num_censored == int((~ref["arrived"]).sum())
    # Two float64 least-squares solvers on the same 8 integer points (|a|, |b| < 100, log P
    # spread > 0.1): they agree to ~1e-12; 1e-9 leaves room.
    assert (cal.a, cal.b) == (pytest.approx(a, abs=1e-9), pytest.approx(b, abs=1e-9))
    return {
        "refs": refs, "stats": stats, "dm": dm, "rule": rule, "model": model, "report": report,
        "ledger": ledger, "calibration": cal,
    }  # fmt: skip


def test_hf_bert_dict_batches_calibrated_path(tmp_path: Path) -> None:
    _check_calibrated_path(
        MemorisingBert, RuleSentences(48, flipped=tuple(FLIPPED)), RuleSentences(16, seed=1),
        _bert_logits, epochs=12, tmp_path=tmp_path, lr=0.1,
    )  # fmt: skip


# ------------------------------------------------------------------ the LSTM, in two formats
class OwnKeys(Dataset):
    """The same examples as dicts of keys no default adapter knows."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        x, y = self.data[i]
        return {"tokens": x, "cls": y}


class OwnKeysLSTM(LSTMClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch["tokens"]), batch["cls"])


def own_keys_adapter(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    logits = model(batch["tokens"])
    return F.cross_entropy(logits, batch["cls"], reduction="none"), logits, batch["cls"]


class OwnKeysAdapter(BatchAdapter):
    """`own_keys_adapter` as a class that can also replace the labels (`"random_label"`)."""

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> ExampleOutputs:
        return ExampleOutputs(*own_keys_adapter(model, batch))

    def targets(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["cls"]

    def with_targets(self, batch: dict[str, Tensor], targets: Tensor) -> dict[str, Tensor]:
        return {**batch, "cls": targets}


def _as_own_keys(module: nn.Module) -> OwnKeysLSTM:
    twin = OwnKeysLSTM()
    twin.load_state_dict(module.state_dict())
    return twin.eval()


def test_lstm_calibrated_path_and_a_custom_batch_format(tmp_path: Path) -> None:
    data, heldout = Tokens(48, flipped=tuple(FLIPPED)), Tokens(16, seed=1)
    got = _check_calibrated_path(
        LSTMClassifier, data, heldout, _rnn_logits, epochs=25, tmp_path=tmp_path, lr=0.1
    )
    # The same models and examples in a dict format of the user's own keys.
    refs = ReferenceModels([_as_own_keys(m) for m in got["refs"].modules], got["refs"].in_mask)
    model = _as_own_keys(got["model"])
    dm = ForgetRetainDataModule(
        OwnKeys(data), FORGET, heldout=OwnKeys(heldout), batch_size=8, seed=0
    )
    loader = DataLoader(IndexedDataset(OwnKeys(data)), batch_size=16)
    for call in (
        lambda: refs.statistics(loader),
        lambda: reference_heldout_values(refs, dm.heldout_dataloader()),
        lambda: verify_forget_set(got["rule"], model, dm),
        lambda: calibrated_unlearn(model, dm, got["rule"], steps=3, retrain_steps=100),
    ):
        with pytest.raises(BatchFormatError, match="batch_adapter") as caught:
            call()
        assert isinstance(caught.value, KeyError)  # what a dict lookup raises, named
        assert not str(caught.value).startswith("'")  # not quoted like a bare KeyError
    # `batch_adapter=` reaches every step, and gives the tuple format's numbers.
    stats = refs.statistics(loader, batch_adapter=own_keys_adapter)
    torch.testing.assert_close(stats.phi, got["stats"].phi, rtol=0, atol=1e-6)
    held = reference_heldout_values(refs, dm.heldout_dataloader(), batch_adapter=own_keys_adapter)
    rule = OutRule.from_reference(stats, heldout=held)
    before = verify_forget_set(rule, model, dm, batch_adapter=own_keys_adapter)
    expected = got["report"].verification_before
    assert before["flagged_ids"] == expected["flagged_ids"]
    # The same float32 operations on the same tensors: equal up to summation order.
    assert before["mean_score"] == pytest.approx(expected["mean_score"], abs=1e-6)
    # A CalibratedStopping of its own reads the batches with the UnlearningModule's adapter.
    unlearner = UnlearningModule(
        copy.deepcopy(model).train(), lr=0.1, batch_adapter=own_keys_adapter
    )
    stop = CalibratedStopping(rule, hold=1, stop=False)
    pl.Trainer(**{**QUIET, "max_steps": 1, "callbacks": [stop]}).fit(unlearner, datamodule=dm)
    first = stop.trajectory[0]
    assert (first["step"], first["flagged"]) == (0, before["flagged"])
    assert first["mean_score"] == pytest.approx(before["mean_score"], abs=1e-9)
    _, report = calibrated_unlearn(
        model, dm, rule, steps=3, retrain_steps=100, hold=1, lr=0.1, trainer_kwargs=TRAINER,
        batch_adapter=own_keys_adapter,
    )  # fmt: skip
    tuple_report = got["report"]
    assert (report.steps_used, report.stop_reason) == (
        tuple_report.steps_used,
        tuple_report.stop_reason,
    )
    after, expected = report.verification_after, tuple_report.verification_after
    assert after["flagged_ids"] == expected["flagged_ids"]
    assert after["mean_score"] == pytest.approx(expected["mean_score"], abs=1e-6)
    assert report.after["forget"]["loss"] == pytest.approx(
        tuple_report.after["forget"]["loss"], abs=1e-6
    )
    # The budget calibration reads the user's format through the adapter too, relabelling
    # included, and times the same steps as on the tuples.
    cal = calibrate_budget(
        refs, OwnKeys(data), got["ledger"], rule, cap=CAP, hold=1, probe_size=PROBE,
        heldout=OwnKeys(heldout), batch_size=8, num_models=1, seed=0, hurdle=False,
        method=CAL_METHOD, trainer_kwargs=TRAINER, lr=0.1, batch_adapter=OwnKeysAdapter(),
    )  # fmt: skip
    tuple_cal = got["calibration"]
    assert (cal.num_points, cal.num_censored) == (tuple_cal.num_points, tuple_cal.num_censored)
    assert (cal.a, cal.b) == (tuple_cal.a, tuple_cal.b)  # the same steps, the same P


# ------------------------------------------------------------------ formats the path cannot read
class HFOnTuples(nn.Module):
    """A BERT fed `(input_ids, labels)` tuples whose forward returns HF's `ModelOutput`."""

    def __init__(self) -> None:
        super().__init__()
        self.model = BertClassifier().model

    def forward(self, x: Tensor) -> Any:
        return self.model(input_ids=x)


class RawLSTM(nn.Module):
    """An LSTM whose forward returns its `(output, (h, c))` tuple: no logits to score."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.rnn = nn.Embedding(VOCAB, 8), nn.LSTM(8, 4, batch_first=True)

    def forward(self, x: Tensor) -> Any:
        return self.rnn(self.embed(x))


def _refs(*modules: nn.Module) -> ReferenceModels:
    mask = torch.zeros(len(modules), 12, dtype=torch.bool)
    mask[0, :6] = True
    mask[1:, 6:] = True
    return ReferenceModels(list(modules), mask)


def test_model_output_on_tuple_batches_is_read_through_its_logits() -> None:
    sentences = Sentences(12)
    tuples = TensorDataset(sentences.ids, sentences.labels)
    model = HFOnTuples().eval()
    stats = _refs(model, copy.deepcopy(model)).statistics(DataLoader(tuples, batch_size=5))
    with torch.no_grad():
        logits = model.model(input_ids=sentences.ids).logits.double()
    logp = logits.log_softmax(dim=-1).gather(1, sentences.labels[:, None])[:, 0]
    expected = logp - torch.log1p(-logp.exp())
    torch.testing.assert_close(stats.phi[0], expected, rtol=0, atol=PHI_TOL)


def test_unreadable_outputs_and_missing_ids_are_named() -> None:
    sentences = Sentences(12)
    tuples = TensorDataset(sentences.ids, sentences.labels)
    with pytest.raises(BatchFormatError, match=r"got tuple.*batch_adapter") as caught:
        _refs(RawLSTM(), RawLSTM()).statistics(DataLoader(tuples, batch_size=4))
    assert isinstance(caught.value, TypeError)

    class Stream(IterableDataset):
        def __iter__(self) -> Any:
            return (sentences[i] for i in range(len(sentences)))

    bert = BertClassifier().eval()
    with pytest.raises(MissingSampleIdError, match="IndexedDataset"):
        _refs(bert, bert).statistics(DataLoader(Stream(), batch_size=4))
    # A plain map-style dataset needs no IndexedDataset: the sampler gives the same ids.
    plain = _refs(bert, bert).statistics(DataLoader(sentences, batch_size=5, shuffle=True))
    indexed = _refs(bert, bert).statistics(DataLoader(IndexedDataset(sentences), batch_size=4))
    torch.testing.assert_close(plain.phi, indexed.phi, rtol=0, atol=1e-6)
    assert not bool(plain.phi.isnan().any())
    assert math.isfinite(float(plain.loss.sum()))


def test_reference_training_batches_carry_ids_that_a_bert_ignores() -> None:
    """`train_reference_models` adds `sample_id` to dict batches, so `self.model(**batch)` gets
    `sample_id=`: transformers 5 swallows it, and the weights are those of the plain batches."""
    data = Sentences(16)
    weights = []
    for dataset in (data, IndexedDataset(data)):
        pl.seed_everything(0, verbose=False)
        module = BertClassifier()
        _fit(module, dataset, epochs=1)
        weights.append(torch.cat([p.detach().flatten() for p in module.parameters()]))
    assert torch.equal(weights[0], weights[1])
