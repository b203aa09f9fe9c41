"""The library API in one page: monitor -> per-instance privacy losses -> calibrated unlearning.

Run: .venv/bin/python examples/unlearn_digits.py   (about 30 s on 2 CPU cores)
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from lightning_unlearn import PerInstancePrivacyMonitor
from lightning_unlearn.accounting import UnlearningConstants
from lightning_unlearn.data import DigitsDataModule
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.models import GroupNormCNN
from lightning_unlearn.unlearning.budget import compute_budget
from lightning_unlearn.unlearning.module import UnlearningModule
from lightning_unlearn.unlearning.stopping import LossCalibratedStopping


def main() -> dict[str, Any]:
    """Run the walk-through; returns what it built (for inspection, e.g. by the tests)."""
    torch.set_num_threads(1)  # small models: one thread is fastest, and safe on shared machines
    pl.seed_everything(0)
    dm = DigitsDataModule(batch_size=64)  # batches are (x, y, sample_id)
    model = GroupNormCNN(input_size=8, lr=0.1)

    # 1. Train as usual, with one extra callback.
    monitor = PerInstancePrivacyMonitor(noise_multiplier=1.0)  # nominal sigma, THEORY §1
    trainer = pl.Trainer(max_epochs=10, callbacks=[monitor], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
    trainer.fit(model, datamodule=dm)
    privacy = monitor.ledger.privacy_loss(8).cpu()  # P(x, alpha=8) per training example

    # 2. A deletion request: 40 random training examples; their budget uses their max P.
    forget_ids = torch.randperm(len(privacy), generator=torch.Generator().manual_seed(0))[:40]
    print(f"P(x, 8) of the forget set: max {privacy[forget_ids].max():.3g}, "
          f"median over all examples {privacy.median():.3g}")  # fmt: skip
    frdm = ForgetRetainDataModule(dm.train_dataset, forget_ids, heldout=dm.test_dataset)

    # 3. Budget from THEORY §5 (constants are a documented choice), then unlearn with SGLD.
    constants = UnlearningConstants(alpha=2, c_lsi=0.5, langevin_sigma=1.0, lr=0.05,
                                    target_epsilon=1.0)  # fmt: skip
    # `model=` checks that the ledger was recorded with exactly these weights. A budget above
    # one training run (here 200 steps) is refused by default, as retraining would be cheaper;
    # this example allows more to show the bound's value.
    budget = compute_budget(monitor.ledger, frdm, constants=constants, model=model, max_steps=1000)
    unlearner = UnlearningModule(model, method="sgld", lr=0.05, sgld_sigma=0.01)
    stopping = LossCalibratedStopping(check_every_n_steps=10, tolerance=0.01)
    pl.Trainer(max_steps=budget, callbacks=[stopping], logger=False, enable_checkpointing=False,
               enable_progress_bar=False).fit(unlearner, datamodule=frdm)  # fmt: skip

    result = unlearner.result
    assert result is not None
    print(f"budget {budget} steps, used {result.steps} ({result.stop_reason})")
    for when in ("before", "after"):
        split = getattr(result, when)
        print(f"{when}: forget acc {split['forget']['accuracy']:.3f}, "
              f"test acc {split['heldout']['accuracy']:.3f}, "
              f"MIA AUROC {split['forget_mia_auroc']:.3f}")  # fmt: skip
    return {"monitor": monitor, "frdm": frdm, "unlearner": unlearner, "budget": budget}


if __name__ == "__main__":
    main()
