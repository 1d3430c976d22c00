"""Cross-backend: one tiny random float32 checkpoint gives the same greedy tokens on llama.cpp, MLX and ONNX.

Random weights make the logits of many tokens close together, so agreement here means the three runtimes
compute the same model (rope base, biases, norms, tied embeddings) and read the same tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="needs the convert extra")
pytest.importorskip("mlx_lm", reason="needs the mlx extra")
pytest.importorskip("onnxruntime_genai", reason="needs the onnx extra")

import edgereason as er

pytestmark = pytest.mark.convert

PROMPT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"
N_TOKENS = 24


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def artefacts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from edgereason.convert import convert, make_tiny_checkpoint

    root = tmp_path_factory.mktemp(f"cross-{request.param}")
    hf = make_tiny_checkpoint(request.param, root / "hf")
    return {
        "llama.cpp": convert(hf, root / "model.gguf", to="gguf", quant="f32").path,
        "mlx": convert(hf, root / "mlx", to="mlx", quant="f32").path,
        "onnx": convert(hf, root / "onnx", to="onnx", quant="fp32").path,
    }


def greedy(path: Path, backend: str) -> tuple[str, list[str]]:
    with er.load(path, backend=backend, n_ctx=256, max_sequences=2, threads=2) as eng:
        assert eng.info.format == {"llama.cpp": "gguf"}.get(backend, backend)
        res = eng.complete(PROMPT, max_tokens=N_TOKENS, temperature=0.0, ignore_eos=True, logprobs=True)
        c = res.choices[0]
        assert c.completion_tokens == N_TOKENS
        return c.content, [t.token for t in c.logprobs or []]


def test_same_greedy_tokens_on_every_local_backend(artefacts: dict[str, Path]) -> None:
    outs = {backend: greedy(path, backend) for backend, path in artefacts.items()}
    ref = outs["llama.cpp"]
    assert len(ref[1]) == N_TOKENS
    for backend, out in outs.items():
        assert out == ref, backend


def test_auto_selection_matches_the_artefact(artefacts: dict[str, Path]) -> None:
    assert {b: er.pick_backend(p) for b, p in artefacts.items()} == {b: b for b in artefacts}
