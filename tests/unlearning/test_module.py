"""UnlearningModule (unlearning/module.py): objectives, optimizers, checkpoints, errors.

Budgets, stopping, the oracle and the result have their own files beside this one."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_unlearn import (
    SGLD,
    ForgetRetainDataModule,
    UnlearningModule,
    UnsupportedModuleError,
)
from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.errors import InvalidArgumentError
from lightning_unlearn.unlearning import (
    METHODS,
    module_state_dict_from_checkpoint,
)
from tests.unlearning._digits import quiet_trainer
from tests.unlearning._tiny import Tiny
from tests.unlearning._tiny import tiny_batch as _batch
from tests.unlearning._tiny import tiny_data as _data


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


class _Dropped(Tiny):
    """Records whether its dropout was in training mode at every forward with gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.modes.append(self.drop.training)
        return self.fc(self.drop(x))


@pytest.mark.parametrize("method", ["finetune", "sgld"])
def test_a_module_left_in_eval_mode_is_unlearned_in_training_mode(method: str) -> None:
    dm = ForgetRetainDataModule(IndexedDataset(_data()), [0, 6, 9], heldout=8, batch_size=8)
    net = _Dropped().eval()  # e.g. after the user evaluated it
    unlearner = UnlearningModule(net, method=method, lr=0.05)
    with pytest.warns(UserWarning, match="entirely in eval mode"):
        quiet_trainer(max_steps=3).fit(unlearner, datamodule=dm)
    assert len(net.modes) == 3
    assert all(net.modes)
    # A module with one layer set to eval on purpose keeps it so (Lightning's own rule).
    frozen = _Dropped()
    frozen.drop.eval()
    quiet_trainer(max_steps=2).fit(UnlearningModule(frozen, method=method, lr=0.05), datamodule=dm)
    assert frozen.modes == [False, False]
