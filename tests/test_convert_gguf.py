"""Real conversions of tiny random checkpoints (real tokenizers) to GGUF, read back and run by llama.cpp."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgereason.convert import embedded_gguf_path, hf_to_gguf, logits_parity, make_tiny_checkpoint
from edgereason.convert.tiny import qwen_tokenizer_dir
from edgereason.errors import InvalidRequestError, ModelLoadError
from edgereason.gguf_meta import read_gguf_info

# edgereason.convert resolves lazily; these are what its functions import.
pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("transformers", reason="needs the convert extra")
gguf = pytest.importorskip("gguf")

pytestmark = pytest.mark.convert

QUESTION = [
    {
        "role": "user",
        "content": "A farmer has 12 cows and buys 7 more, then sells 3. How many cows does he have now? "
        "Think it through step by step before answering.",
    }
]
# transformers and llama.cpp, both float32 with an f32 KV cache, measured over the whole prompt: llama
# 3.1e-5, qwen2 2.5e-5, qwen3 1.8e-5. About 10x that, so a real regression (25-100x) fails.
LOGIT_TOLERANCE = {"llama": 3e-4, "qwen2": 2.5e-4, "qwen3": 2e-4}
PRE_TOKENIZER = {"llama": "smollm", "qwen2": "qwen2", "qwen3": "qwen2"}


@pytest.fixture(scope="module")
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint dir, f32 GGUF) for the architecture in ``request.param``, built once per module."""
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    hf_dir = make_tiny_checkpoint(arch, root / "hf")
    return hf_dir, hf_to_gguf(hf_dir, root / f"{arch}-f32.gguf")


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    assert field is not None, f"{key} missing from the GGUF"
    return field.contents()


def _prompt_ids(hf_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    ids = tokenizer.apply_chat_template(
        QUESTION, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert len(ids) >= 32
    return list(ids)


@pytest.mark.parametrize("converted", ["llama", "qwen3"], indirect=True)
def test_gguf_carries_architecture_tokenizer_and_template(converted: tuple[Path, Path]) -> None:
    hf_dir, path = converted
    config = json.loads((hf_dir / "config.json").read_text())
    arch = config["model_type"]
    reader = gguf.GGUFReader(path)

    assert _field(reader, "general.architecture") == arch
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.ALL_F32
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}
    assert _field(reader, f"{arch}.block_count") == config["num_hidden_layers"]
    rope_theta = config.get("rope_parameters", config).get("rope_theta")  # transformers 5 nests it
    assert _field(reader, f"{arch}.rope.freq_base") == rope_theta
    assert _field(reader, f"{arch}.attention.head_count_kv") == config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    assert _field(reader, f"{arch}.attention.key_length") == head_dim

    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == PRE_TOKENIZER[arch]
    assert len(_field(reader, "tokenizer.ggml.tokens")) == config["vocab_size"]
    assert _field(reader, "tokenizer.ggml.eos_token_id") == config["eos_token_id"]
    assert _field(reader, "tokenizer.ggml.padding_token_id") == config["pad_token_id"]

    # The template is the family's real one, carried through the checkpoint unchanged.
    template = _field(reader, "tokenizer.chat_template")
    if arch == "qwen3":
        source = json.loads((qwen_tokenizer_dir() / "tokenizer_config.json").read_text())["chat_template"]
        assert template == source
        assert "<think>" in template and "enable_thinking" in template
    else:
        assert template == read_gguf_info(embedded_gguf_path()).chat_template


@pytest.mark.parametrize("converted", ["llama", "qwen2", "qwen3"], indirect=True)
def test_f32_gguf_logits_match_transformers(converted: tuple[Path, Path]) -> None:
    hf_dir, path = converted
    report = logits_parity(hf_dir, path, _prompt_ids(hf_dir), greedy_tokens=32)

    assert report["n_positions"] >= 32
    arch = json.loads((hf_dir / "config.json").read_text())["model_type"]
    assert report["max_abs_diff"] < LOGIT_TOLERANCE[arch], report
    assert report["top1_agreement"] == 1.0
    assert report["greedy_gguf"] == report["greedy_hf"]
    # Random weights still give a continuation worth comparing: not one token repeated 32 times.
    assert len(set(report["greedy_hf"])) > 1


@pytest.mark.parametrize("converted", ["llama"], indirect=True)
def test_q8_0_export_is_quantized_and_close(converted: tuple[Path, Path], tmp_path: Path) -> None:
    hf_dir, _ = converted
    path = hf_to_gguf(hf_dir, tmp_path / "q8.gguf", "q8_0")

    assert read_gguf_info(path).file_type == "Q8_0"
    report = logits_parity(hf_dir, path, _prompt_ids(hf_dir), greedy_tokens=4)
    # Measured: mean |diff| ~0.05 and top-1 agreement ~0.88 on logits up to ~9 (random weights leave small
    # top-1 margins). The bounds catch gross errors only; the f32 test is the precise one.
    assert report["mean_abs_diff"] < 0.1
    assert report["top1_agreement"] >= 0.75


@pytest.mark.parametrize("converted", ["llama"], indirect=True)
def test_existing_output_is_kept_unless_forced(converted: tuple[Path, Path], tmp_path: Path) -> None:
    hf_dir, _ = converted
    out = tmp_path / "model.gguf"
    out.write_bytes(b"keep me")

    with pytest.raises(InvalidRequestError, match="already exists"):
        hf_to_gguf(hf_dir, out)
    assert out.read_bytes() == b"keep me"

    hf_to_gguf(hf_dir, out, force=True)
    assert read_gguf_info(out).architecture == "llama"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


@pytest.mark.parametrize("converted", ["llama"], indirect=True)
def test_failed_conversion_leaves_no_file(converted: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    hf_dir, _ = converted
    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    # Splitting on whitespace first changes how the converter's probe text tokenizes: no known model.
    tokenizer = json.loads((src / "tokenizer.json").read_text())
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [{"type": "WhitespaceSplit"}, byte_level],
    }
    (src / "tokenizer.json").write_text(json.dumps(tokenizer))
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    with pytest.raises(ModelLoadError, match="pre-tokenizer was not recognized"):
        hf_to_gguf(src, out_dir / "model.gguf")
    assert list(out_dir.iterdir()) == []


def test_rejects_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        hf_to_gguf(tmp_path, tmp_path / "out.gguf")
    with pytest.raises(ModelLoadError, match="not a directory"):
        hf_to_gguf(tmp_path / "missing", tmp_path / "out.gguf")


def test_rejects_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen3ForCausalLM"]}))
    with pytest.raises(ModelLoadError, match="no weights"):
        hf_to_gguf(tmp_path, tmp_path / "out.gguf")


def test_rejects_unsupported_architecture(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel is not supported.*Qwen3ForCausalLM"):
        hf_to_gguf(tmp_path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_rejects_unknown_outtype(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="outtype") as info:
        hf_to_gguf(tmp_path, tmp_path / "out.gguf", "q4_k")  # type: ignore[arg-type]
    assert info.value.param == "outtype"
