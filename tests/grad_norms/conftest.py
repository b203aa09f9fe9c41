"""Run these tests with one torch thread.

On a loaded 2-core machine, torch's intra-op thread pool contends with other processes: a loop
of batch-size-1 backward passes was measured ~50x slower with 2 threads than with 1.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
