"""The monitor's first-step self-check: it passes on exact norms in every mode, names the cause
of a wrong one, and leaves the run exactly as it would be without it."""

from __future__ import annotations

import dataclasses
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_unlearn import PerInstancePrivacyMonitor
from lightning_unlearn.callbacks._isolation import slice_example
from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.errors import SelfCheckError
from lightning_unlearn.grad_norms import GradSampleMode
from tests.callbacks._support import loader, make_trainer

X, Y = torch.randn(24, 6, generator=torch.Generator().manual_seed(1)), torch.arange(24) % 3


class Counter(nn.Module):
    """A buffer changed in place by every training forward (like BatchNorm's statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.calls += 1
        return x


class Net(pl.LightningModule):
    def __init__(self, dropout: float = 0.3, manual: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(6, 8), nn.Tanh(), nn.Dropout(dropout), Counter(), nn.Linear(8, 3)
        )
        self.automatic_optimization = not manual
        self.seen: list[int] = []  # a plain attribute changed in place by training_step
        self.total = torch.zeros(())  # a tensor attribute changed in place
        self.draws: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        loss = F.cross_entropy(self.net(x), y)
        self.seen.append(batch_idx)
        self.draws.append(float(torch.rand(())))  # random numbers drawn outside the loss
        self.total += loss.detach()
        self.log("train_loss", loss)
        if not self.automatic_optimization:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            self.lr_schedulers().step()
        return loss

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)]


def _run(self_check: bool, manual: bool = False, mode: GradSampleMode = "fused") -> Any:
    torch.manual_seed(123)
    module = Net(manual=manual)
    monitor = PerInstancePrivacyMonitor(self_check=self_check, grad_sample_mode=mode)
    trainer = make_trainer(max_steps=3, callbacks=[monitor])
    trainer.fit(module, loader(IndexedDataset(TensorDataset(X, Y)), batch_size=8, shuffle=True))
    return module, monitor, trainer, torch.rand(3)


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
def test_self_check_has_no_side_effect_on_the_run(manual: bool) -> None:
    module, monitor, trainer, after = _run(True, manual)
    plain, plain_monitor, plain_trainer, plain_after = _run(False, manual)
    assert monitor.self_check_result is not None
    assert plain_monitor.self_check_result is None
    for (name, p), q in zip(module.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert torch.equal(module.net[3].calls, plain.net[3].calls)
    assert int(plain.net[3].calls) == 3
    assert module.draws == plain.draws
    assert module.seen == plain.seen == [0, 1, 2]
    assert torch.equal(module.total, plain.total)
    assert torch.equal(after, plain_after)  # the random number generators were restored
    assert trainer.global_step == plain_trainer.global_step
    assert (
        trainer.optimizers[0].param_groups[0]["lr"]
        == plain_trainer.optimizers[0].param_groups[0]["lr"]
    )
    assert torch.equal(
        trainer.optimizers[0].state_dict()["state"][0]["momentum_buffer"],
        plain_trainer.optimizers[0].state_dict()["state"][0]["momentum_buffer"],
    )
    assert torch.equal(monitor.ledger.privacy, plain_monitor.ledger.privacy)
    assert trainer.callback_metrics["train_loss"] == plain_trainer.callback_metrics["train_loss"]


@pytest.mark.parametrize("mode", ["fused", "ghost", "hooks", "functorch"])
def test_self_check_passes_on_exact_norms_in_every_mode(mode: GradSampleMode) -> None:
    _, monitor, _, _ = _run(True, mode=mode)
    result = monitor.self_check_result
    assert result is not None
    assert result.positions == [0, 2, 5, 7]  # spread over the batch of 8
    torch.testing.assert_close(result.engine, result.reference, rtol=1e-4, atol=1e-6)
    assert result.rtol == 1e-4
    assert result.seconds > 0


class Summed(Net):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        return F.cross_entropy(self.net(x), y, reduction="sum")


class Meaned(Net):
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        return F.cross_entropy(self.net(x), y)


@pytest.mark.parametrize(
    ("module", "reduction", "ratio", "cause"),
    [
        (Summed, "mean", 8.0, "loss_reduction='sum'"),
        (Meaned, "sum", 1 / 8, "loss_reduction='mean'"),
    ],
    ids=["sum-read-as-mean", "mean-read-as-sum"],
)
def test_self_check_names_the_loss_reduction(
    module: type[Net], reduction: Any, ratio: float, cause: str
) -> None:
    monitor = PerInstancePrivacyMonitor(loss_reduction=reduction)
    data = loader(IndexedDataset(TensorDataset(X, Y)), batch_size=8)
    with pytest.raises(SelfCheckError, match=cause) as err:
        make_trainer(max_steps=1, callbacks=[monitor]).fit(module(), data)
    message = str(err.value)
    assert message.count("): engine ") == 4
    assert message.count("sample id") == 4
    ratios = err.value.engine / err.value.reference
    torch.testing.assert_close(ratios, torch.full_like(ratios, ratio), rtol=1e-4, atol=0)


def test_self_check_can_be_turned_off() -> None:
    monitor = PerInstancePrivacyMonitor(self_check=False)
    data = loader(IndexedDataset(TensorDataset(X, Y)), batch_size=8)
    make_trainer(max_steps=1, callbacks=[monitor]).fit(Summed(), data)  # silently B x: opted out
    assert monitor.self_check_result is None


def test_invalid_self_check_samples() -> None:
    with pytest.raises(ValueError, match="self_check_samples"):
        PerInstancePrivacyMonitor(self_check_samples=0)


@dataclasses.dataclass
class Item:
    x: Tensor
    name: str


def test_slice_example_keeps_structure() -> None:
    from transformers import BatchEncoding

    batch = {
        "enc": BatchEncoding({"input_ids": torch.arange(8).view(4, 2)}),
        "pair": (torch.arange(4), [torch.ones(4, 3), 5]),
        "item": Item(torch.arange(4) * 2, "a"),
        "other": torch.zeros(3),  # not of the batch size: kept
    }
    one = slice_example(batch, 2, 4)
    assert isinstance(one["enc"], BatchEncoding)
    assert one["enc"]["input_ids"].tolist() == [[4, 5]]
    assert one["pair"][0].tolist() == [2]
    assert one["pair"][1][0].shape == (1, 3)
    assert one["pair"][1][1] == 5
    assert one["item"].x.tolist() == [4]
    assert one["item"].name == "a"
    assert one["other"].shape == (3,)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        (lambda b: torch.ones(3), "one loss weight per example"),
        (lambda b: -torch.ones(8), "non-negative"),
        (lambda b: 1.0, "1-D tensor"),
    ],
    ids=["shape", "sign", "type"],
)
def test_invalid_loss_weights_are_refused(weights: Any, match: str) -> None:
    monitor = PerInstancePrivacyMonitor(loss_reduction=weights)
    data = loader(IndexedDataset(TensorDataset(X, Y)), batch_size=8)
    with pytest.raises(ValueError, match=match):
        make_trainer(max_steps=1, callbacks=[monitor]).fit(Meaned(), data)


def test_invalid_loss_reduction_string() -> None:
    with pytest.raises(ValueError, match="loss_reduction"):
        PerInstancePrivacyMonitor(loss_reduction="token")  # type: ignore[arg-type]
