"""Suite-wide test settings.

- One torch thread per test: on a 2-core machine torch's intra-op pool contends with the other
  process of a DDP test (or anything else running); a loop of batch-size-1 backward passes was
  measured ~50x slower with 2 threads than with 1.
- Every test runs in its own temporary directory, so a Trainer without `default_root_dir`
  (checkpoints/, lightning_logs/) never writes into the checkout.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
