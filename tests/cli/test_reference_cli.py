"""``lightning-unlearn reference`` on the bundled digits: files written, a rerun resumes."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_unlearn.cli import main
from lightning_unlearn.unlearning.reference import balanced_membership
from lightning_unlearn.unlearning.reference_stats import ReferenceStatistics


def test_reference_command_writes_models_and_statistics(tmp_path: Path) -> None:
    argv = ["reference", "--model", "lightning_unlearn.models.MLPClassifier",
            "--model.init_args.input_dim", "64", "--k", "2", "--max_epochs", "1",
            "--progress", "false", "--output_dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    stats = ReferenceStatistics.load(tmp_path / "reference_stats.pt")
    n = stats.phi.shape[1]
    assert n == 1258
    assert torch.equal(stats.in_mask, balanced_membership(n, 2, seed=0))
    assert not stats.phi.isnan().any()
    saved = (tmp_path / "model_001.pt").stat().st_mtime_ns
    assert main(argv) == 0  # resumes: nothing left to train, the files stay
    assert (tmp_path / "model_001.pt").stat().st_mtime_ns == saved
    argv[argv.index("--k") + 1] = "4"
    assert main(argv) == 2  # another K in the same directory: exit 2
