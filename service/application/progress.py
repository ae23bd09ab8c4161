"""Progress of an operator's job, streamed to the CLI's progress bar."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress(Generic[T]):
    """`done` of `total` finished; `batch` holds the results since the previous report."""

    done: int
    total: int
    batch: list[T] = field(default_factory=list)
