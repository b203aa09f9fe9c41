"""The experiments refuse bad settings from Python with named errors, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_unlearn.errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    OutputWriteError,
)
from lightning_unlearn.experiments import run_demo, run_reproduce


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"epochs": 0}, InvalidArgumentError, "Expected `epochs` to be an integer >= 1"),
        ({"epochs": 2.0}, InvalidArgumentTypeError, "Expected `epochs` to be an integer"),
        ({"methods": "sgld"}, InvalidArgumentTypeError, "Expected `methods` to be a non-empty"),
        ({"methods": ()}, InvalidArgumentTypeError, "Expected `methods` to be a non-empty"),
        ({"methods": ["sgld", "x"]}, InvalidArgumentError, "Expected `methods` to be one of"),
        ({"reference_k": 3}, InvalidArgumentError, "Expected `reference_k` to be even"),
        ({"reference_k": 0}, InvalidArgumentError, "Expected `reference_k` to be an integer >= 2"),
        ({"calibration_models": 0}, InvalidArgumentError, "Expected `calibration_models`"),
        ({"hold": -1}, InvalidArgumentError, "Expected `hold` to be an integer >= 0"),
        ({"budget_steps": -1}, InvalidArgumentError, "Expected `budget_steps`"),
        ({"dataset": "mnist"}, InvalidArgumentError, "Expected `dataset` to be one of"),
        ({"progress": "yes"}, InvalidArgumentTypeError, "Expected `progress` to be True"),
        ({"max_grad_norm": -1.0}, InvalidArgumentError, "Expected `max_grad_norm`"),
    ],
)
def test_run_demo_refuses_bad_settings(
    kwargs: dict[str, object], error: type[Exception], message: str, tmp_path: Path
) -> None:
    out = tmp_path / "never"
    with pytest.raises(error, match=message):
        run_demo(out, **kwargs)  # type: ignore[arg-type]
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": 0.0}, "Expected `scale`"),
        ({"seeds": 0}, "Expected `seeds`"),
        ({"heuristic_groups": 1}, "Expected `heuristic_groups` to be True or False"),
        ({"tau": -0.1}, "Expected `tau`"),
    ],
)
def test_run_reproduce_refuses_bad_settings(
    kwargs: dict[str, object], message: str, tmp_path: Path
) -> None:
    out = tmp_path / "never"
    with pytest.raises(InvalidArgumentError, match=message):
        run_reproduce(out, **kwargs)  # type: ignore[arg-type]
    assert not out.exists()


def test_an_output_dir_that_is_a_file_is_refused_before_training(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for target in (afile, afile / "sub"):
        with pytest.raises(OutputWriteError, match="output_dir"):
            run_demo(target)
