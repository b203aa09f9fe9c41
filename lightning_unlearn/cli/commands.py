"""``lightning-unlearn fit | unlearn | evaluate``: three LightningCLI subcommands.

The schema is LightningCLI's: ``model`` and ``data`` are ``class_path`` / ``init_args`` (any
LightningModule / LightningDataModule; the bundled digits CNN and data by default), the trainer
is ``trainer.*`` with the monitor under ``trainer.callbacks``, and ``--print_config`` prints a
YAML file that ``--config`` reads back. ``unlearn``'s model is an
:class:`~lightning_unlearn.UnlearningModule` whose ``module`` is the user's module, a nested
``class_path``; ``unlearn`` and ``evaluate`` are :class:`CommandTrainer` methods, whose
signatures are their options. ``--output_dir`` is the trainer's ``default_root_dir``.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_unlearn.checkpoints import ChecksummedCheckpointIO
from lightning_unlearn.errors import CheckpointError, InvalidArgumentError, LightningUnlearnError
from lightning_unlearn.integrity import atomic_write, check_output_dir
from lightning_unlearn.unlearning.budget import Aggregate
from lightning_unlearn.unlearning.module import UnlearningModule
from lightning_unlearn.validation import check_float, check_int

__all__ = ["Bound", "CommandTrainer", "UnlearnCLI", "run"]

_CNN = {"class_path": "lightning_unlearn.models.GroupNormCNN", "init_args": {"input_size": 8}}
_DIGITS = {"class_path": "lightning_unlearn.data.modules.DigitsDataModule"}
_UNLEARNER = {"class_path": "lightning_unlearn.UnlearningModule", "init_args": {"module": _CNN}}
_MONITOR = {"class_path": "lightning_unlearn.PerInstancePrivacyMonitor"}
DEFAULTS: dict[str, dict[str, Any]] = {
    "fit": {"model": _CNN, "data": _DIGITS, "trainer.callbacks": [_MONITOR]},
    "unlearn": {"model": _UNLEARNER, "data": _DIGITS},
    "evaluate": {"model": _CNN, "data": _DIGITS},
}
"""Per command: the parser defaults (what runs without a config file)."""
_NEGATIVE_OR_IDS = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+(,\s*[+-]?\d+)+,?$")
TRAINER_DEFAULTS = {
    "accelerator": "auto",
    "devices": 1,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 5,
}


@dataclasses.dataclass(frozen=True)
class Bound:
    """The constants of THEORY §5's bound (η is the unlearner's ``lr``).

    Args:
        alpha: Rényi order of the target (the bound reads P at order 4α).
        c_lsi: log-Sobolev constant (unknown for deep nets: a calibration knob).
        langevin_sigma: σ of the bound's Langevin noise; default: the training σ the ledger
            recorded (its ``noise_multiplier``).
        target_epsilon: target Rényi divergence.
        d0: D0 of THEORY §5.
        d_irr: D_irr of THEORY §5.
    """

    alpha: int = 2
    c_lsi: float = 1.0
    langevin_sigma: float | None = None
    target_epsilon: float = 1.0
    d0: float = 0.0
    d_irr: float = 0.0


class CommandTrainer(Trainer):
    """A Trainer with ``unlearn`` and ``evaluate`` beside ``fit`` (their outputs go to
    ``default_root_dir``)."""

    def unlearn(
        self,
        model: UnlearningModule,
        datamodule: LightningDataModule,
        checkpoint: str,
        ledger: str,
        forget_ids: str,
        budget_steps: int | None = None,
        max_budget_steps: int | None = None,
        aggregate: Aggregate = "max",
        bound: Bound = Bound(),
        reference: str | None = None,
        calibration: str | None = None,
        hold: int | None = None,
    ) -> dict[str, Any]:
        """Unlearn a forget set from a `fit` checkpoint with a budget from its privacy losses.

        Args:
            model: the unlearner; its ``module`` is the trained model's class.
            datamodule: the training data of the checkpoint (ids are its training set's).
            checkpoint: ``model.ckpt`` written by ``fit``.
            ledger: ``privacy_ledger.pt`` written by the same ``fit``.
            forget_ids: a .json list, a text file of ids, or inline ``3,17,42``.
            budget_steps: a fixed step budget instead of the bound's.
            max_budget_steps: the largest bound budget allowed (default: the training run's
                steps, beyond which retraining is cheaper).
            aggregate: P of a forget set: ``max``, ``mean`` or ``sum`` of its examples'.
            bound: THEORY §5's constants (when ``budget_steps`` is not given).
            reference: the directory of ``lightning-unlearn reference`` (same model class and
                data): the calibrated path, per-example stop rule against the reference
                models' OUT distributions, retrain recommendation, ``request.json`` / ``.md``.
            calibration: a saved budget calibration (``BudgetCalibration.save``): the budget
                of the calibrated path (with ``reference``; else the bound or ``budget_steps``).
            hold: the calibrated stop rule's hold window (extra satisfied steps; default 5;
                with ``reference``).
        """
        from lightning_unlearn.cli._unlearn import unlearn

        return unlearn(
            self, model, datamodule, checkpoint, ledger, forget_ids,
            budget_steps=budget_steps, max_budget_steps=max_budget_steps,
            aggregate=aggregate, bound=bound, reference=reference, calibration=calibration,
            hold=hold,
        )  # fmt: skip

    def evaluate(
        self,
        model: LightningModule,
        datamodule: LightningDataModule,
        checkpoint: str,
        forget_ids: str,
        oracle: str | None = None,
        reference: str | None = None,
    ) -> dict[str, Any]:
        """Measure forgetting: loss and accuracy per split, MIA AUROC, vs an oracle, barrier.

        Args:
            model: the model class of the checkpoints.
            datamodule: their training data.
            checkpoint: the model to evaluate.
            forget_ids: a .json list, a text file of ids, or inline ``3,17,42``.
            oracle: a checkpoint retrained without the forget set (KS test, JS divergence).
            reference: a checkpoint for the forget-set loss barrier (e.g. the original).
        """
        from lightning_unlearn.cli._evaluate import evaluate

        return evaluate(self, model, datamodule, checkpoint, forget_ids, oracle, reference)


class UnlearnCLI(LightningCLI):
    """The LightningCLI of ``fit``, ``unlearn`` and ``evaluate``; parse errors are raised (the
    dispatcher reports them as one line, exit status 2), not printed with a usage."""

    def __init__(self, args: list[str]) -> None:
        names = {name: {"prog": f"lightning-unlearn {name}"} for name in self.subcommands()}
        super().__init__(
            LightningModule,
            LightningDataModule,
            trainer_class=CommandTrainer,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,  # config.yaml is written atomically in `before_*`
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            parser_kwargs={"prog": "lightning-unlearn", **names},
            args=args,
            auto_configure_optimizers=False,  # an --optimizer would replace SGLD silently
            load_from_checkpoint_support=False,
        )

    @staticmethod
    @override
    def subcommands() -> dict[str, set[str]]:
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "unlearn": {"model", "datamodule"},
            "evaluate": {"model", "datamodule"},
        }

    @override
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(exit_on_error=False, **kwargs)
        # `--forget_ids -1,3` is an inline id list (its negative id a range error), not an option.
        parser._negative_number_matcher = _NEGATIVE_OR_IDS
        return parser

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--output_dir", type=str, required=True, help="output directory")
        parser.add_argument(
            "--threads", type=int, default=1, help="torch CPU threads (more than idle cores "
            "slow these small models down many times over)",
        )  # fmt: skip
        parser.link_arguments("output_dir", "trainer.default_root_dir")
        parser.set_defaults(DEFAULTS[parser.prog.rsplit(" ", 1)[-1]])

    @override
    def _parse_ckpt_path(self) -> None:
        """Do not read hyper-parameters back from ``ckpt_path``: they are the config's own, and
        reading them would ``torch.load`` the file before its checksum is verified."""

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        threads = check_int("threads", config.threads, minimum=0)
        check_output_dir(config.output_dir)
        epochs = config.trainer.max_epochs
        if self.subcommand == "fit" and config.trainer.max_steps == -1 and epochs is not None:
            check_int("trainer.max_epochs", epochs, minimum=1)
        init_args = config.model.get("init_args")
        if init_args is not None and "lr" in init_args:
            check_float("model.init_args.lr", init_args.lr)
        if threads > 0:
            torch.set_num_threads(threads)

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except LightningUnlearnError:
            raise
        except (ValueError, TypeError, MisconfigurationException) as err:
            raise InvalidArgumentError(
                f"Invalid `{self.subcommand}` configuration: {_reason(err)}"
            ) from None

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        out = self._output_dir()
        config = self._get(self.config_init, "trainer")
        if config.get("logger") is None:  # Lightning's default: TensorBoard, here unversioned
            kwargs["logger"] = TensorBoardLogger(
                save_dir=str(out), name="tensorboard", version="", default_hp_metric=False
            )
        kwargs["plugins"] = [*_as_list(config.get("plugins")), ChecksummedCheckpointIO()]
        if self.subcommand == "fit":  # a checksummed checkpoint after every epoch
            kwargs["callbacks"] = [*_as_list(config.get("callbacks")), _epoch_checkpoints(out)]
        elif config.get("enable_checkpointing") is None:
            kwargs["enable_checkpointing"] = False
        return super().instantiate_trainer(**kwargs)

    def _output_dir(self) -> Path:
        return Path(self._get(self.config, "output_dir"))

    def _write_config(self) -> None:
        out = self._output_dir()
        out.mkdir(parents=True, exist_ok=True)
        text = self._parser(self.subcommand).dump(self.config[self.subcommand], skip_unset=False)
        with atomic_write(out / "config.yaml", "w") as fh:
            fh.write(text)

    def before_fit(self) -> None:
        """Resolve ``ckpt_path`` (``last``: this output directory's ``last.ckpt``)."""
        ckpt = self.config_init["fit"].get("ckpt_path")
        if ckpt == "last":
            ckpt = str(self._output_dir() / "checkpoints" / "last.ckpt")
        if ckpt is not None and not Path(ckpt).is_file():
            raise CheckpointError(
                f"There is no checkpoint to resume from at {ckpt!r}; run `fit` without "
                "`--ckpt_path` to start afresh, or pass an existing checkpoint."
            )
        self.config_init["fit"]["ckpt_path"] = ckpt
        self._write_config()
        self._start = time.perf_counter()

    def after_fit(self) -> None:
        """Write the model, the ledger and the summary (see :func:`write_fit_outputs`)."""
        from lightning_unlearn.cli._fit import write_fit_outputs

        write_fit_outputs(
            self.trainer,
            self.model,
            self.datamodule,
            resumed_from=self.config_init["fit"].get("ckpt_path"),
            seconds=time.perf_counter() - self._start,
        )

    def before_unlearn(self) -> None:
        """Write ``config.yaml``."""
        self._write_config()


def _epoch_checkpoints(out: Path) -> ModelCheckpoint:
    return ModelCheckpoint(
        dirpath=str(out / "checkpoints"),
        filename="epoch{epoch:04d}-step{step}",
        auto_insert_metric_name=False,
        every_n_epochs=1,
        save_top_k=1,
        save_last=True,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )


def _reason(err: BaseException) -> str:
    """The cause of a construction error; for a union type, the first subtype's error."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [repr(err)]
    if "Errors:" in lines:
        causes = [x[2:] for x in lines[lines.index("Errors:") + 1 :] if x.startswith("- ")]
        return causes[0] if causes else lines[0]
    return lines[0]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def run(argv: list[str]) -> None:
    """Run ``lightning-unlearn fit|unlearn|evaluate ARGS`` (``argv`` starts with the command)."""
    UnlearnCLI(list(argv))
