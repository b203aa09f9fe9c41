"""The shared validators (lightning_unlearn/validation.py), forget ids' one check among them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lightning_unlearn.errors import ForgetSetError, InvalidArgumentError
from lightning_unlearn.validation import check_float, check_forget_ids, check_int


@pytest.mark.parametrize("value", [0, -1, 2.5, 2.0, True, "3", None])
def test_check_int_rejects(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match="`n` to be an integer >= 1"):
        check_int("n", value)


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan"), False, "1"])
def test_check_float_rejects(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match="`lr` to be a finite number"):
        check_float("lr", value)


@pytest.mark.parametrize(
    "ids",
    [
        [7, 2, 5],
        ["7", " 2 ", "+5"],  # a text file's ids
        np.array([7, 2, 5], dtype=np.int32),
        [np.int64(7), np.int16(2), 5],
        torch.tensor([7, 2, 5], dtype=torch.int32),
        list(torch.tensor([7, 2, 5])),  # 0-d tensors
        (5, 7, 2),
    ],
)
def test_every_accepted_form_gives_the_same_canonical_tensor(ids: object) -> None:
    out = check_forget_ids(ids, num_samples=8)
    assert out.dtype == torch.long
    assert out.device.type == "cpu"
    assert out.tolist() == [2, 5, 7]


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        ([0, True], "item 1 is True"),
        ([0, 1.0], r"item 1 is 1\.0 \(float\)"),
        ([0, 2**63], "fit in int64"),
        (["x"], r"item 0 is 'x' \(str\)"),
        ("3,4", "a sequence"),
        (3, "a sequence"),
        ([[1, 2]], "1-D"),
        ([], "empty forget set"),
        (torch.tensor([], dtype=torch.long), "empty forget set"),
        (torch.ones(3, dtype=torch.bool), "boolean mask"),
        (torch.tensor([1.0, 2.0]), "dtype torch.float32"),
        (np.array([0.5]), "dtype torch.float64"),
        ([4, 4, 1, 1], r"duplicates \[1, 4\]"),
        ([1, 8], r"in \[0, 8\).*\[8\]"),
        ([-1, 3], r"in \[0, 8\).*\[-1\]"),
    ],
)
def test_bad_forget_ids_name_what_is_wrong(ids: object, match: str) -> None:
    with pytest.raises(ForgetSetError, match=match) as err:
        check_forget_ids(ids, num_samples=8)
    assert isinstance(err.value, InvalidArgumentError)  # one family for bad configuration


def test_without_num_samples_the_range_is_left_to_the_entry_point_that_knows_it() -> None:
    assert check_forget_ids(["-1", "3"]).tolist() == [-1, 3]
    with pytest.raises(ForgetSetError, match=r"in the ids\.json"):
        check_forget_ids([1.5], name="the ids in the ids.json")


@given(st.lists(st.integers(0, 999), min_size=1, max_size=50, unique=True))
def test_canonical_form_is_sorted_and_idempotent(ids: list[int]) -> None:
    out = check_forget_ids(ids, num_samples=1000)
    assert out.tolist() == sorted(ids)
    assert torch.equal(check_forget_ids(out, num_samples=1000), out)
