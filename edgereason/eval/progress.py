"""A progress bar: tqdm when installed, else a plain counter on stderr."""

from __future__ import annotations

import sys
from typing import Protocol, TextIO


class Progress(Protocol):
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


class CounterProgress:
    """``label: done/total``: rewritten in place on a terminal, else a line every tenth of the way."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total, self.label, self.done = total, label, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.step = max(1, total // 10)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            self.stream.write(f"\r{self.label}: {self.done}/{self.total}")
        elif self.done % self.step == 0 or self.done == self.total:
            self.stream.write(f"{self.label}: {self.done}/{self.total}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def make_progress(total: int, label: str) -> Progress:
    try:
        from tqdm import tqdm
    except ImportError:
        return CounterProgress(total, label)
    bar: Progress = tqdm(total=total, desc=label, file=sys.stderr, unit="item", dynamic_ncols=True)
    return bar


def no_progress(total: int, label: str) -> Progress:
    return NoProgress()
