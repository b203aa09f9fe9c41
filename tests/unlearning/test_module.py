"""UnlearningModule's objectives, optimizers, errors; budgets; the oracle (tiny, fast)."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

from lightning_unlearn import (
    SGLD,
    ForgetRetainDataModule,
    LedgerMismatchError,
    UnlearningModule,
    UnsupportedModuleError,
)
from lightning_unlearn.accounting import (
    PrivacyLedger,
    StepModel,
    UnlearningConstants,
    unlearning_steps,
)
from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.errors import InvalidArgumentError
from lightning_unlearn.unlearning import (
    METHODS,
    compute_budget,
    module_state_dict_from_checkpoint,
    train_oracle,
)
from tests.unlearning._digits import quiet_trainer


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, ids = batch
        self.seen.extend(ids.tolist())
        loss = F.cross_entropy(self(x), y)
        self.log("inner_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data(n: int = 40) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def _batch(ds: TensorDataset, ids: list[int]):

    items = [IndexedDataset(ds)[i] for i in ids]
    return torch.utils.data.default_collate(items)


def test_objectives_match_their_definitions() -> None:
    ds = _data()
    retain, forget = _batch(ds, [0, 1, 2, 3]), _batch(ds, [10, 11])
    net = Tiny()
    ce_r = F.cross_entropy(net(retain[0]), retain[1])
    ce_f = F.cross_entropy(net(forget[0]), forget[1])
    l1 = sum(p.abs().sum() for p in net.parameters())
    expected = {
        "finetune": ce_r,
        "sgld": ce_r,
        "neggrad": -ce_f,
        "neggrad_plus": 0.7 * ce_r - 0.3 * ce_f,
        "l1_sparse": ce_r + 0.01 * l1,
    }
    for method, value in expected.items():
        u = UnlearningModule(net, method=method, forget_weight=0.3, l1_weight=0.01)
        got = u.unlearning_loss(retain, forget, 0)
        torch.testing.assert_close(got, value, msg=method)

    u = UnlearningModule(net, method="random_label", num_classes=3, seed=2)
    relabelled = u.relabel(forget)
    assert (relabelled.field1 != forget.field1).all()  # never the true label
    assert torch.equal(u.relabel(forget).field1, relabelled.field1)  # stable per sample id
    assert torch.equal(relabelled.sample_id, forget.sample_id)
    ce_wrong = F.cross_entropy(net(forget[0]), relabelled.field1)
    torch.testing.assert_close(u.unlearning_loss(retain, forget, 0), ce_r + ce_wrong)
    # Inferred number of classes: the width of the module's output.
    assert UnlearningModule(net, method="random_label")._infer_num_classes(forget) == 3


def test_default_and_custom_optimizers() -> None:
    net = Tiny()
    assert isinstance(UnlearningModule(net, method="sgld").configure_optimizers(), SGLD)
    opt = UnlearningModule(net, method="finetune", lr=0.2).configure_optimizers()
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.2
    custom = UnlearningModule(net, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    assert isinstance(custom.configure_optimizers(), torch.optim.Adam)


def test_every_method_runs_under_a_trainer_and_checkpoints_the_users_keys(tmp_path) -> None:

    # explicit ids (IndexedDataset): the user's training_step reads them from its batches
    data = IndexedDataset(_data())
    dm = ForgetRetainDataModule(data, [0, 6, 9], heldout=8, batch_size=8, forget_batch_size=2)
    for method in METHODS:
        net = Tiny()
        start = {k: v.clone() for k, v in net.state_dict().items()}
        ckpt = ModelCheckpoint(dirpath=tmp_path / method, save_last=True)
        trainer = quiet_trainer(max_steps=4, enable_checkpointing=True, callbacks=[ckpt])
        unlearner = UnlearningModule(net, method=method, lr=0.05)
        trainer.fit(unlearner, datamodule=dm)
        assert trainer.global_step == 4
        assert unlearner.result is not None
        assert unlearner.result.stop_reason == "budget"
        assert not torch.equal(net.fc.weight, start["fc.weight"]), method
        # Only retain ids reach the user's training_step for retain-only methods.
        if method in ("finetune", "sgld", "l1_sparse"):
            assert not set(net.seen) & {0, 6, 9}
        else:
            assert set(net.seen) & {0, 6, 9}
        # The checkpoint holds the user's keys under "module."; they load into the user's class.
        state = module_state_dict_from_checkpoint(tmp_path / method / "last.ckpt")
        assert set(state) == set(start)
        fresh = Tiny()
        fresh.load_state_dict(state)
        torch.testing.assert_close(fresh.fc.weight, net.fc.weight)


def test_bad_modules_and_arguments_get_named_errors() -> None:
    class NoStep(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(2, 2)

    with pytest.raises(UnsupportedModuleError, match="training_step"):
        UnlearningModule(NoStep())
    with pytest.raises(UnsupportedModuleError, match="LightningModule"):
        UnlearningModule(object())  # type: ignore[arg-type]
    with pytest.raises(UnsupportedModuleError, match="UnlearningModule"):
        UnlearningModule(UnlearningModule(Tiny()))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method"):
        UnlearningModule(Tiny(), method="forget_everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="forget_weight"):
        UnlearningModule(Tiny(), forget_weight=2.0)
    with pytest.raises(InvalidArgumentError, match=r"`sgld_sigma` of SGLD.*finetune"):
        UnlearningModule(Tiny(), method="sgld", sgld_sigma=0)
    UnlearningModule(Tiny(), method="finetune", sgld_sigma=0)  # unused by finetune: accepted

    class OwnLoss(UnlearningModule):  # a module without training_step is fine with own losses
        def retain_loss(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.module.fc(batch[0]).pow(2).mean()

    assert isinstance(OwnLoss(NoStep()).module, NoStep)

    class NoLoss(Tiny):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None

    ds = _data()
    with pytest.raises(UnsupportedModuleError, match="scalar loss"):
        UnlearningModule(NoLoss()).retain_loss(_batch(ds, [0, 1]), 0)
    with pytest.raises(ValueError, match="forget batch"):
        UnlearningModule(Tiny(), method="neggrad").training_step(_batch(ds, [0, 1]), 0)


def _ledger(p: list[float], **metadata: Any) -> PrivacyLedger:
    ledger = PrivacyLedger(len(p), alphas=(2, 8), metadata=metadata or None)
    ledger.privacy[:, 1] = torch.tensor(p, dtype=torch.float64)
    return ledger


def test_budget_sources_aggregates_and_monotonicity() -> None:
    constants = UnlearningConstants(
        alpha=2, c_lsi=2.0, langevin_sigma=0.5, lr=0.1, target_epsilon=0.5, d0=0.1
    )
    p = [0.5, 2.0, 8.0, 30.0, 100.0]
    ledger = _ledger(p)

    def bound(pv: float) -> int:  # THEORY §5 written out independently
        c = lambda a: (a - 0.5) / (a - 1)  # noqa: E731
        spn = 2 * 2.0 / (0.5**2 * 0.1)
        return max(0, math.ceil(spn * math.log(c(2) * (c(4) * pv + 0.1) / 0.5)))

    assert compute_budget(ledger, [0, 3], constants=constants) == bound(30.0)
    assert compute_budget(ledger, [0, 3], constants=constants, aggregate="mean") == bound(15.25)
    assert compute_budget(ledger, [0, 3], constants=constants, aggregate="sum") == bound(30.5)
    budgets = [compute_budget(ledger, [i], constants=constants) for i in range(5)]
    assert budgets == sorted(budgets)  # non-decreasing in P
    assert budgets[-1] > budgets[0]
    model = StepModel(a=7.0, b=-3.0)
    assert compute_budget(ledger, [4], step_model=model, order=8) == math.ceil(
        7.0 * math.log(100.0) - 3.0
    )
    assert compute_budget(steps=12) == 12


def test_budget_sigma_defaults_to_the_ledgers_training_sigma() -> None:
    """THEORY §5 continues the noisy process: without `langevin_sigma` the ledger's σ is used."""
    unset = UnlearningConstants(alpha=2, c_lsi=1.0, lr=0.1, target_epsilon=1.0)
    recorded = _ledger([0.5, 40.0], noise_multiplier=0.5)
    explicit = UnlearningConstants(
        alpha=2, c_lsi=1.0, langevin_sigma=0.5, lr=0.1, target_epsilon=1.0
    )
    spn = 2 * 1.0 / (0.5**2 * 0.1)  # alpha C_LSI / (sigma^2 eta), written out
    expected = math.ceil(spn * math.log(1.5 * (7 / 6 * 40.0) / 1.0))
    assert compute_budget(recorded, [1], constants=unset) == expected
    assert compute_budget(recorded, [1], constants=explicit) == expected
    other = UnlearningConstants(alpha=2, c_lsi=1.0, langevin_sigma=1.0, lr=0.1, target_epsilon=1.0)
    assert compute_budget(recorded, [1], constants=other) < expected  # an explicit σ wins
    from_ledger = UnlearningConstants.from_ledger(recorded, c_lsi=1.0, lr=0.1, target_epsilon=1.0)
    assert from_ledger == explicit
    with pytest.raises(LedgerMismatchError, match=r"noise_multiplier.*langevin_sigma"):
        compute_budget(_ledger([0.5, 40.0]), [1], constants=unset)
    with pytest.raises(InvalidArgumentError, match="langevin_sigma"):
        unlearning_steps(1.0, unset)


def test_budget_rejects_mismatched_ledgers_and_bad_calls() -> None:
    constants = UnlearningConstants(
        alpha=2, c_lsi=1.0, langevin_sigma=1.0, lr=0.1, target_epsilon=1.0
    )
    dm = ForgetRetainDataModule(_data(40), [1, 2])
    with pytest.raises(LedgerMismatchError, match="40-example"):
        compute_budget(_ledger([1.0] * 30), dm, constants=constants)
    other = _ledger([1.0] * 40, dataset_fingerprint="0123456789abcdef")
    with pytest.raises(LedgerMismatchError, match="dataset_fingerprint"):
        compute_budget(other, dm, constants=constants)
    with pytest.raises(ValueError, match="exactly one"):
        compute_budget(_ledger([1.0] * 40), dm)
    with pytest.raises(ValueError, match="exactly one"):
        compute_budget(_ledger([1.0] * 40), dm, constants=constants, steps=3)
    with pytest.raises(ValueError, match="order"):
        compute_budget(_ledger([1.0] * 40), dm, step_model=StepModel(a=1.0, b=0.0))
    with pytest.raises(ValueError, match="int >= 0"):
        compute_budget(steps=-1)


def test_train_oracle_retrains_a_fresh_copy_on_the_retain_set_only() -> None:

    dm = ForgetRetainDataModule(IndexedDataset(_data()), [3, 4, 7], batch_size=8)
    net = Tiny()
    oracle = train_oracle(net, dm, max_epochs=1, accelerator="cpu")
    assert type(oracle) is Tiny
    assert oracle is not net
    assert sorted(oracle.seen) == dm.retain_ids.tolist()  # one epoch over the retain set only
    assert not net.seen  # the original is untouched


def test_stopping_trajectory_is_logged_to_tensorboard(tmp_path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_unlearn.unlearning import LossCalibratedStopping

    dm = ForgetRetainDataModule(IndexedDataset(_data()), [0, 6, 9], heldout=10, batch_size=8)
    stop = LossCalibratedStopping(check_every_n_steps=2, criterion="loss_gap", min_steps=100)
    logger = TensorBoardLogger(tmp_path, name="unlearn")
    trainer = quiet_trainer(max_steps=6, logger=logger, callbacks=[stop])
    unlearner = UnlearningModule(Tiny(), method="finetune", lr=1e-4)
    trainer.fit(unlearner, datamodule=dm)
    logger.experiment.flush()
    events = EventAccumulator(str(logger.log_dir))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("unlearn/mia_auroc")}
    assert [r["step"] for r in stop.trajectory] == [0, 2, 4, 6]
    assert sorted(logged) == [0, 2, 4, 6]
    for record in stop.trajectory:
        assert logged[record["step"]] == pytest.approx(record["mia_auroc"], abs=1e-6)
    gaps = {e.step: e.value for e in events.Scalars("unlearn/loss_gap")}
    assert gaps[6] == pytest.approx(stop.trajectory[-1]["loss_gap"], abs=1e-5)
