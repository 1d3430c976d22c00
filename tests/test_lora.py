"""LoRA adapters for real: PEFT adapters on tiny random bases, converted, run by llama.cpp in the engine."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import edgereason as er
from edgereason.errors import InvalidRequestError, ModelLoadError, UnknownAdapterError

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers", reason="needs the convert extra")
gguf = pytest.importorskip("gguf")

from edgereason.convert import hf_to_gguf, logits_parity, make_tiny_checkpoint  # noqa: E402
from edgereason.convert.lora_export import (  # noqa: E402
    hf_copy_of_gguf,
    make_random_peft_adapter,
    peft_to_gguf,
)

pytestmark = pytest.mark.convert

# With the adapter applied, llama.cpp vs transformers+peft measured 1.3e-5 (llama) and 8.8e-6 (qwen3):
# about 10x that, so a real regression (25-100x) fails.
LOGIT_TOLERANCE = {"llama": 1.5e-4, "qwen3": 1e-4}
PROMPT = "Question: what is 12 + 7? Think step by step.\nAnswer:"
GREEDY = {"temperature": 0.0, "max_tokens": 12, "ignore_eos": True}


class Tiny:
    def __init__(self, root: Path, arch: str, n_adapters: int) -> None:
        self.hf = make_tiny_checkpoint(arch, root / "hf")  # type: ignore[arg-type]
        self.gguf = hf_to_gguf(self.hf, root / "base-f32.gguf")
        self.peft = [
            make_random_peft_adapter(self.hf, root / f"peft{i}", seed=i + 1) for i in range(n_adapters)
        ]
        self.lora = [peft_to_gguf(p, self.hf, root / f"lora{i}.gguf") for i, p in enumerate(self.peft)]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return Tiny(tmp_path_factory.mktemp("llama"), "llama", 3)


@pytest.fixture(scope="module")
def engine(llama: Tiny) -> Iterator[er.Engine]:
    adapters = {"a": llama.lora[0], "b": llama.lora[1]}
    eng = er.load(llama.gguf, adapters=adapters, n_ctx=256, max_sequences=8, threads=2)
    yield eng
    eng.close()


def _prompt_ids(hf_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(hf_dir)(PROMPT)["input_ids"])[:24]


# -- conversion ------------------------------------------------------------------------------------------
def test_adapter_gguf_layout(llama: Tiny) -> None:
    import json

    reader = gguf.GGUFReader(llama.lora[0])
    field = lambda k: reader.get_field(k).contents()  # noqa: E731
    assert field("general.type") == "adapter"
    assert field("general.architecture") == "llama"
    assert field("adapter.type") == "lora"
    assert field("adapter.lora.alpha") == pytest.approx(16.0)
    config = json.loads((llama.hf / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    tensors = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
    assert len(tensors) == layers * 7 * 2
    # GGUF shapes (ggml order): lora_a [in, r], lora_b [r, out].
    assert tensors["blk.0.attn_q.weight.lora_a"] == (hidden, 8)
    assert tensors["blk.0.attn_q.weight.lora_b"] == (8, hidden)
    assert tensors[f"blk.{layers - 1}.ffn_down.weight.lora_a"] == (config["intermediate_size"], 8)
    assert not np.allclose(reader.get_tensor(1).data, 0)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_logits_match_transformers_with_peft(arch: str, llama: Tiny, tmp_path: Path) -> None:
    tiny = llama if arch == "llama" else Tiny(tmp_path, arch, 1)
    ids = _prompt_ids(tiny.hf)
    with_adapter = logits_parity(
        tiny.hf, tiny.gguf, ids, greedy_tokens=8, peft_dir=tiny.peft[0], adapter=tiny.lora[0]
    )
    assert with_adapter["max_abs_diff"] <= LOGIT_TOLERANCE[arch], with_adapter
    assert with_adapter["greedy_match"]
    without = logits_parity(tiny.hf, tiny.gguf, ids, greedy_tokens=8)
    assert without["greedy_hf"] != with_adapter["greedy_hf"]  # the adapter really changes the model


def test_adapter_for_another_base_is_refused(llama: Tiny, tmp_path: Path) -> None:
    other = make_tiny_checkpoint("llama", tmp_path / "other", hidden=32, heads=2, kv_heads=1)
    with pytest.raises(ModelLoadError, match="another base"):
        peft_to_gguf(llama.peft[0], other, tmp_path / "x.gguf")


# -- the engine --------------------------------------------------------------------------------------------
def test_adapter_on_off_and_per_request_switching(engine: er.Engine) -> None:
    refs = {name: engine.complete(PROMPT, adapter=name, **GREEDY).content for name in ("a", "b")}
    refs[""] = engine.complete(PROMPT, **GREEDY).content
    assert len(set(refs.values())) == 3  # each adapter changes greedy output
    # Switching back and forth per request reproduces each reference.
    for name in ("b", "", "a", "b", "a", ""):
        fields = {"adapter": name} if name else {}
        assert engine.complete(PROMPT, **GREEDY, **fields).content == refs[name]
    # adapters=[{name, scale}] at scale 1 is the same as adapter=name; scale 0 is the base model.
    assert engine.complete(PROMPT, adapters=[{"name": "a", "scale": 1.0}], **GREEDY).content == refs["a"]
    assert engine.complete(PROMPT, adapters=[{"name": "a", "scale": 0.0}], **GREEDY).content == refs[""]


def test_concurrent_mixed_adapter_requests(engine: er.Engine) -> None:
    names = ["a", "b", "", "a", "b", ""]
    refs = {n: engine.complete(PROMPT, **GREEDY, **({"adapter": n} if n else {})).content for n in set(names)}
    streams = [engine.stream_completion(PROMPT, **GREEDY, **({"adapter": n} if n else {})) for n in names]
    outs = [s.wait().content for s in streams]
    assert outs == [refs[n] for n in names]


def test_adapter_specs() -> None:
    from edgereason.adapters import parse_adapter_spec

    spec = parse_adapter_spec("x=/tmp/a:b.gguf:0.5")
    assert (spec.name, str(spec.path), spec.scale) == ("x", "/tmp/a:b.gguf", 0.5)
    for bad in ("x=a.gguf:4.5", "x=a.gguf:-5", "x", "x=", "../x=a.gguf"):
        with pytest.raises(InvalidRequestError):
            parse_adapter_spec(bad)


def test_unknown_adapter_and_bad_scale(engine: er.Engine) -> None:
    with pytest.raises(UnknownAdapterError, match="'nope' is not loaded"):
        engine.complete(PROMPT, adapter="nope")
    with pytest.raises(InvalidRequestError) as err:
        engine.complete(PROMPT, adapters=[{"name": "a", "scale": 4.5}])
    assert err.value.param == "adapters.0.scale"


def test_hot_load_unload_and_bad_files(engine: er.Engine, llama: Tiny, tmp_path: Path) -> None:
    engine.load_adapter("c", llama.lora[2])
    assert engine.adapter_names == ["a", "b", "c"]
    ref = engine.complete(PROMPT, adapter="c", **GREEDY).content
    # Unloading while a request decodes with it is refused; the request finishes unharmed.
    stream = engine.stream_completion(PROMPT, adapter="c", temperature=0.0, max_tokens=200, ignore_eos=True)
    it = iter(stream)
    next(it)
    with pytest.raises(InvalidRequestError, match="in use"):
        engine.unload_adapter("c")
    for _ in it:
        pass
    assert stream.result is not None and stream.result.content.startswith(ref)
    engine.unload_adapter("c")
    with pytest.raises(UnknownAdapterError):
        engine.complete(PROMPT, adapter="c")
    with pytest.raises(UnknownAdapterError):
        engine.unload_adapter("c")

    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(llama.lora[0].read_bytes()[:5000])
    with pytest.raises(ModelLoadError):
        engine.load_adapter("bad", corrupt)
    qwen_dir = make_tiny_checkpoint("qwen2", tmp_path / "qwen")
    foreign = peft_to_gguf(make_random_peft_adapter(qwen_dir, tmp_path / "qp"), qwen_dir, tmp_path / "q.gguf")
    with pytest.raises(ModelLoadError):
        engine.load_adapter("foreign", foreign)
    with pytest.raises(ModelLoadError):
        engine.load_adapter("model", llama.gguf)  # a model, not an adapter
    assert engine.adapter_names == ["a", "b"]
    assert engine.complete(PROMPT, adapter="a", **GREEDY).content  # still serving


def test_concurrent_load_while_decoding(engine: er.Engine, llama: Tiny) -> None:
    ref = engine.complete(PROMPT, adapter="b", **GREEDY).content
    streams = [engine.stream_completion(PROMPT, adapter="b", **GREEDY) for _ in range(3)]
    loader = threading.Thread(target=engine.load_adapter, args=("late", llama.lora[2]))
    loader.start()
    outs = [s.wait().content for s in streams]
    loader.join()
    assert outs == [ref] * 3 and "late" in engine.adapter_names
    engine.unload_adapter("late")


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}


def test_peft_folder_is_converted_on_load(
    engine: er.Engine, llama: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "edgereason" / "adapters"
    ref = engine.complete(
        PROMPT, adapter="a", **GREEDY
    ).content  # "a" = peft[0] converted against the HF base
    engine.load_adapter("pa", llama.peft[0])  # the PEFT folder itself, converted against the loaded GGUF
    try:
        assert engine.complete(PROMPT, adapter="pa", **GREEDY).content == ref
    finally:
        engine.unload_adapter("pa")
    (cached,) = cache.glob("*.gguf")
    assert _tensors(cached).keys() == _tensors(llama.lora[0]).keys()
    assert all(np.array_equal(v, _tensors(llama.lora[0])[k]) for k, v in _tensors(cached).items())
    # Converted once: loading it again reuses the cached file.
    stamp = cached.stat().st_mtime_ns
    engine.load_adapter("pa", llama.peft[0])
    engine.unload_adapter("pa")
    assert list(cache.glob("*.gguf")) == [cached] and cached.stat().st_mtime_ns == stamp

    # An adapter made for another base is refused with the reason; nothing is cached for it.
    other = make_tiny_checkpoint("llama", tmp_path / "other", hidden=32, heads=2, kv_heads=1)
    with pytest.raises(ModelLoadError, match="another base"):
        engine.load_adapter("foreign", make_random_peft_adapter(other, tmp_path / "op"))
    assert engine.adapter_names == ["a", "b"] and list(cache.glob("*.gguf")) == [cached]


def test_peft_folder_without_the_convert_extra(
    engine: er.Engine, llama: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "edgereason.convert.lora_export", None)  # import fails as if absent
    with pytest.raises(ModelLoadError, match=r"pip install 'edgereason\[convert\]'.*lora_export"):
        engine.load_adapter("pa", llama.peft[0])


def test_self_consistency_votes_under_the_adapter(engine: er.Engine) -> None:
    votes = {"samples": 3, "temperature": 0.0}
    for name in ("a", ""):
        fields = {"adapter": name} if name else {}
        ref = engine.complete(PROMPT, **GREEDY, **fields).content
        res = engine.complete(PROMPT, self_consistency=votes, **GREEDY, **fields)
        report = res.extra["self_consistency"]
        assert report["samples_used"] == 3
        assert res.content == ref  # greedy samples under the adapter are the adapter's greedy output


def test_lorid_end_to_end_on_real_adapters(llama: Tiny) -> None:
    adapters = {"ir": llama.lora[0], "kg": llama.lora[1], "dr": llama.lora[2]}
    with er.load(llama.gguf, adapters=adapters, n_ctx=512, max_sequences=4, threads=2) as eng:
        res = eng.chat(
            [{"role": "user", "content": "What is 3 + 4?"}],
            seed=1,
            max_tokens=16,
            lorid={"max_iterations": 2},
        )
    report = res.extra["lorid"]
    # Random adapters on a random base write no answer, so IR and DR never agree: LoRID runs every
    # iteration and reports no answer (the agreement path is covered in test_lorid.py).
    assert report["iterations"] == 2 and report["agreed"] is False
    assert report["ir_answers"] == report["dr_answers"] == [None, None]
    assert report["answer"] is None and res.answer is None
    assert report["knowledge"].strip()  # KG's text reached DR
    # IR, KG and DR each decode to max_tokens in both iterations.
    assert res.usage.completion_tokens == 2 * 3 * 16 and res.finish_reason == "length"


def test_random_adapter_for_the_embedded_model(tmp_path: Path) -> None:
    from edgereason.models import embedded_model_path

    model = embedded_model_path()
    hf = hf_copy_of_gguf(model, tmp_path / "hf")
    peft_dir = make_random_peft_adapter(
        hf, tmp_path / "peft", r=4, target_modules=("q_proj", "v_proj", "o_proj")
    )
    lora = peft_to_gguf(peft_dir, hf, tmp_path / "smollm2-lora.gguf")
    # The GGUF itself as the base (what a PEFT folder given at load uses) converts to the same tensors.
    via_gguf = peft_to_gguf(peft_dir, model, tmp_path / "via-gguf.gguf")
    expected = _tensors(lora)
    assert {k: v.tobytes() for k, v in _tensors(via_gguf).items()} == {
        k: v.tobytes() for k, v in expected.items()
    }
    question = [{"role": "user", "content": "What is 12 + 7?"}]
    with er.load(model, adapters={"x": lora}, n_ctx=512, max_sequences=4) as eng:
        base = eng.chat(question, temperature=0.0, max_tokens=24).content
        tuned = eng.chat(question, temperature=0.0, max_tokens=24, adapter="x").content
        assert tuned != base
        assert eng.chat(question, temperature=0.0, max_tokens=24).content == base


# -- the server ---------------------------------------------------------------------------------------------
def test_server_adapters(llama: Tiny, tmp_path: Path) -> None:
    import contextlib
    import os

    import httpx
    import openai

    from .test_server import _start

    adapter_dir = tmp_path / "adapters"
    adapter_dir.mkdir()
    (adapter_dir / "dira.gguf").write_bytes(llama.lora[0].read_bytes())
    (adapter_dir / "late.gguf.bin").write_bytes(llama.lora[2].read_bytes())  # not *.gguf: not preloaded
    (adapter_dir / "corrupt.bin").write_bytes(llama.lora[1].read_bytes()[:4000])
    (adapter_dir / "model.bin").write_bytes(llama.gguf.read_bytes())
    secret = tmp_path / "outside.gguf"
    secret.write_bytes(llama.lora[1].read_bytes())
    os.symlink(secret, adapter_dir / "link.gguf.bin")
    flags = (
        "--model",
        str(llama.gguf),
        "--adapter",
        f"b={llama.lora[1]}:0.5",
        "--adapter-dir",
        str(adapter_dir),
    )
    with contextlib.contextmanager(_start)(*flags) as server:
        client = server.client()
        models = {m.id: m for m in client.models.list().data}
        assert set(models) >= {"b", "dira"}
        assert models["b"].model_extra is not None and models["b"].model_extra["parent"] != "b"

        def ask(model: str = "default", **extra: object) -> str:
            body = {"ignore_eos": True, **extra}
            res = client.completions.create(
                model=model, prompt=PROMPT, temperature=0.0, max_tokens=12, extra_body=body
            )
            return res.choices[0].text

        base = ask()
        by_name = ask("b")
        assert by_name == ask(adapters=[{"name": "b", "scale": 0.5}]) != base  # model=<adapter> at its scale
        assert ask("dira") == ask(adapter="dira") != base
        with pytest.raises(openai.NotFoundError) as e:
            ask(adapter="nope")
        assert e.value.response.json()["error"]["code"] == "model_not_found"
        with pytest.raises(openai.BadRequestError):
            ask(adapters=[{"name": "b", "scale": 5}])

        post = lambda path, body: httpx.post(f"{server.base}/v1/{path}", json=body, timeout=60)  # noqa: E731
        for bad in ("../outside.gguf", str(secret), "link.gguf.bin", "/etc/passwd", "missing.gguf"):
            r = post("load_lora_adapter", {"lora_name": "evil", "lora_path": bad})
            assert r.status_code == 400, (bad, r.text)
        for bad in ("corrupt.bin", "model.bin"):
            r = post("load_lora_adapter", {"lora_name": "bad", "lora_path": bad})
            assert r.status_code == 400 and r.json()["error"]["param"] == "lora_path", r.text
        r = post("load_lora_adapter", {"lora_name": "late", "lora_path": "late.gguf.bin"})
        assert r.status_code == 200, r.text
        assert "late" in {m.id for m in client.models.list().data}
        assert ask("late") != base
        assert post("unload_lora_adapter", {"lora_name": "late"}).status_code == 200
        assert post("unload_lora_adapter", {"lora_name": "late"}).status_code == 404
        assert ask() == base  # still serving, unchanged


def test_runtime_adapter_endpoints_need_adapter_dir(engine: er.Engine) -> None:
    from fastapi.testclient import TestClient

    from edgereason.server.app import create_app

    client = TestClient(create_app(engine), base_url="http://localhost")  # the Host a loopback server accepts
    r = client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/etc/passwd"})
    assert r.status_code == 404 and "--adapter-dir" in r.json()["error"]["message"]
