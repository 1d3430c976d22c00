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


def tiny_base_with_role_adapters(folder: Path) -> tuple[Path, dict[str, Path]]:
    """A tiny random llama GGUF and three random LoRA GGUFs named for LoRID's roles (ir, kg, dr); skips
    without the convert extra."""
    pytest.importorskip("peft")
    pytest.importorskip("transformers", reason="needs the convert extra")
    from edgereason.convert import hf_to_gguf, make_tiny_checkpoint
    from edgereason.convert.lora_export import make_random_peft_adapter, peft_to_gguf

    hf = make_tiny_checkpoint("llama", folder / "hf")
    base = hf_to_gguf(hf, folder / "base.gguf")
    lora = {
        r: peft_to_gguf(
            make_random_peft_adapter(hf, folder / f"peft-{r}", seed=i + 1), hf, folder / f"{r}.gguf"
        )
        for i, r in enumerate(("ir", "kg", "dr"))
    }
    return base, lora
