"""KV cache types (llama-server's --cache-type-k/-v) load, generate and shrink the per-slot memory."""

from __future__ import annotations

import pytest

import edgereason as er

from .conftest import QUESTION


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_quantised_kv_cache_generates_and_shrinks(model_path, kind: str) -> None:
    with er.load(model_path, n_ctx=512, max_sequences=2, threads=1) as ref:
        full = ref.backend.kv_bytes_per_slot
        # SmolLM2-135M: 30 layers x 3 KV heads x 64 dims x (K + V) x 512 cells x 2 bytes.
        assert full == 30 * 3 * 64 * 2 * 512 * 2
    with er.load(
        model_path, n_ctx=512, max_sequences=2, threads=1, cache_type_k=kind, cache_type_v=kind
    ) as eng:
        res = eng.chat(QUESTION, max_tokens=8, temperature=0.0, ignore_eos=True)
        assert res.usage.completion_tokens == 8 and res.content.strip()
        ratio = eng.backend.kv_bytes_per_slot / full
        assert ratio == pytest.approx((34 / 32) / 2 if kind == "q8_0" else (18 / 32) / 2)


def test_unknown_cache_type_is_refused(model_path) -> None:
    with pytest.raises(er.InvalidRequestError, match="cache_type_k"):
        er.load(model_path, n_ctx=256, max_sequences=1, cache_type_k="q3_k")
