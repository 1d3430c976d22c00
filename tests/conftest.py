from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import edgereason as er
from edgereason.models import embedded_model_path

QUESTION = [{"role": "user", "content": "What is 12 + 7? Answer briefly."}]


@pytest.fixture(scope="session")
def model_path() -> Path:
    return embedded_model_path()


@pytest.fixture(scope="session")
def engine(model_path: Path) -> Iterator[er.Engine]:
    eng = er.load(model_path, n_ctx=2048, max_sequences=16)
    yield eng
    eng.close()
