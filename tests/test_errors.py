"""Shared option checks of isplab.errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from isplab.errors import IsplabError, check_at_least_one


@dataclass
class _Options:
    epochs: int = 3
    batch_size: int = 0
    short: int | None = None


def test_first_option_below_one_is_named_with_its_value():
    check_at_least_one(_Options(batch_size=1), ("epochs", "batch_size", "short"))  # None passes
    with pytest.raises(IsplabError, match=r"^batch_size must be at least 1, got 0$"):
        check_at_least_one(_Options(), ("epochs", "batch_size"))
    with pytest.raises(IsplabError, match=r"^epochs must be at least 1, got -2$"):
        check_at_least_one(_Options(epochs=-2), ("epochs", "batch_size"))
