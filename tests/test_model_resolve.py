"""Model names resolved where users keep models: a Hugging Face hub cache and an Ollama store, both
laid out by the tests in tmp dirs (files are links to the embedded GGUF, so loading works for real).
Never the network: HF_HUB_OFFLINE is set, and the one download test replaces the hub client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import edgereason as er
from edgereason.errors import ModelLoadError
from edgereason.model_resolve import hf_cache_dir, list_hf_cached, list_ollama, quant_of, resolve_name
from edgereason.models import resolve_model

DIGEST = "ab" * 32


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "OLLAMA_MODELS", "EDGEREASON_MODELS_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # never the user's real cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def make_hf_repo(cache: Path, repo: str, files: list[str], target: Path, rev: str = "abc123") -> Path:
    """The hub cache's layout: refs/main -> snapshots/<rev>/<files> (links, as the hub makes them)."""
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / rev
    for f in files:
        (snap / f).parent.mkdir(parents=True, exist_ok=True)
        (snap / f).symlink_to(target)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(rev)
    return snap


def make_ollama(models: Path, name: str, tag: str, target: Path, namespace: str = "library") -> Path:
    manifest = models / "manifests" / "registry.ollama.ai" / namespace / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    layers = [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "cd" * 32, "size": 1},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{DIGEST}", "size": 2},
    ]
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    (models / "blobs").mkdir(exist_ok=True)
    blob = models / "blobs" / f"sha256-{DIGEST}"
    if not blob.exists():
        blob.symlink_to(target)
    return blob


def test_hf_cache_dir_follows_the_hub_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert hf_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hf_cache_dir() == tmp_path / "hub"


def test_quant_of_file_names() -> None:
    assert quant_of("Qwen3-0.6B-Q4_K_M.gguf") == "Q4_K_M"
    assert quant_of("model.q8_0.gguf") == "Q8_0"
    assert quant_of("m-IQ4_XS-00001-of-00003.gguf") == "IQ4_XS"
    assert quant_of("smollm2-135m-instruct-f16.gguf") == "F16"
    assert quant_of("model.gguf") is None


def test_hf_repo_and_quant(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_path: Path) -> None:
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    files = ["m-Q4_K_M.gguf", "m-Q8_0.gguf", "sub/m-F16.gguf", "mmproj-m-F16.gguf", "README.md"]
    snap = make_hf_repo(cache, "org/repo", files, model_path)
    assert resolve_model("org/repo") == snap / "m-Q4_K_M.gguf"  # llama.cpp's default quant
    assert resolve_model("org/repo:Q8_0") == snap / "m-Q8_0.gguf"
    assert resolve_model("org/repo:q8_0") == snap / "m-Q8_0.gguf"
    assert resolve_model("org/repo:F16") == snap / "sub" / "m-F16.gguf"  # not the projector
    assert resolve_model("org/repo:m-Q8_0.gguf") == snap / "m-Q8_0.gguf"  # a file name works too
    with pytest.raises(ModelLoadError, match=r"org/repo has no Q5_K_M GGUF; add one of: F16, Q4_K_M, Q8_0"):
        resolve_model("org/repo:Q5_K_M")


def test_hf_single_file_split_models_and_refs_main(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_path: Path
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / "hub"
    one = make_hf_repo(cache, "org/one", ["only.gguf"], model_path)
    assert resolve_model("org/one") == one / "only.gguf"  # one GGUF: no quant needed
    split = ["big-Q4_K_M-00002-of-00002.gguf", "big-Q4_K_M-00001-of-00002.gguf"]
    snap = make_hf_repo(cache, "org/split", split, model_path)
    assert resolve_model("org/split:Q4_K_M") == snap / "big-Q4_K_M-00001-of-00002.gguf"
    # refs/main names the snapshot even when another one is newer.
    make_hf_repo(cache, "org/one", ["newer-Q8_0.gguf"], model_path, rev="zzz999")
    (cache / "models--org--one" / "refs" / "main").write_text("abc123")
    assert resolve_model("org/one") == one / "only.gguf"


def test_hf_not_cached_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache .*HF_HUB_OFFLINE is set"):
        resolve_model("org/missing:Q4_K_M")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(ModelLoadError, match="pip install huggingface_hub"):
        resolve_model("org/missing")
    # Paths are never taken for repo ids.
    with pytest.raises(ModelLoadError, match="model not found: ./no/such.gguf"):
        resolve_model("./no/such.gguf")


def test_hf_download_picks_the_quant_into_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_path: Path
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    calls: list[tuple[str, str, str]] = []

    def hf_hub_download(repo: str, filename: str, cache_dir: str) -> str:
        calls.append((repo, filename, cache_dir))
        return str(make_hf_repo(Path(cache_dir), repo, [filename], model_path) / filename)

    fake = types.SimpleNamespace(
        list_repo_files=lambda repo: ["a-Q4_K_M.gguf", "a-Q6_K.gguf", "config.json"],
        hf_hub_download=hf_hub_download,
    )
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    got = resolve_model("org/fresh:Q6_K")
    assert calls == [("org/fresh", "a-Q6_K.gguf", str(tmp_path / "hub"))]
    assert got.name == "a-Q6_K.gguf" and got.resolve() == model_path.resolve()
    # The next call finds it in the cache without the client.
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert resolve_model("org/fresh:Q6_K") == got

    def offline(repo: str) -> list[str]:
        raise OSError("Network is unreachable")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(list_repo_files=offline))
    with pytest.raises(ModelLoadError, match="downloading it failed: OSError: Network is unreachable"):
        resolve_model("org/other")


def test_ollama_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_path: Path) -> None:
    models = tmp_path / "ollama"
    monkeypatch.setenv("OLLAMA_MODELS", str(models))
    blob = make_ollama(models, "smol", "135m", model_path)
    make_ollama(models, "smol", "latest", model_path)
    make_ollama(models, "tiny", "v1", model_path, namespace="someone")
    assert resolve_model("smol:135m") == blob
    assert resolve_model("smol") == blob  # :latest
    assert resolve_model("someone/tiny:v1") == blob
    assert resolve_name("smol:7b") is None
    with pytest.raises(ModelLoadError, match="model not found: smol:7b"):
        resolve_model("smol:7b")
    (models / "manifests" / "registry.ollama.ai" / "library" / "gone").mkdir()
    (models / "manifests" / "registry.ollama.ai" / "library" / "gone" / "1b").write_text(
        json.dumps(
            {"layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + "0" * 64}]}
        )
    )
    with pytest.raises(ModelLoadError, match="blob sha256-0+ is missing; run 'ollama pull' again"):
        resolve_model("gone:1b")
    assert sorted(m.name for m in list_ollama()) == ["smol:135m", "smol:latest", "someone/tiny:v1"]


def test_ollama_home_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    blob = make_ollama(tmp_path / ".ollama" / "models", "smol", "latest", model_path)
    assert resolve_model("smol:latest") == blob


def test_load_and_list_end_to_end(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    monkeypatch.setenv("EDGEREASON_MODELS_DIR", str(tmp_path / "mine"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "tiny.gguf").symlink_to(model_path)
    make_hf_repo(tmp_path / "hub", "org/smol-GGUF", ["smol-Q4_1.gguf"], model_path)
    make_ollama(tmp_path / "ollama", "smol", "135m", model_path)
    assert [m.name for m in list_hf_cached()] == ["org/smol-GGUF:Q4_1"]

    out = subprocess.run(
        [sys.executable, "-m", "edgereason", "models", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    listed = {(e["name"], e["source"]) for e in json.loads(out.stdout)}
    assert {("tiny", "models_dir"), ("org/smol-GGUF:Q4_1", "huggingface"), ("smol:135m", "ollama")} <= listed
    assert ("default", "embedded") in listed

    ask = [{"role": "user", "content": "Name a color."}]
    replies = []
    for name in ("org/smol-GGUF:Q4_1", "smol:135m"):
        with er.load(name, n_ctx=256, max_sequences=1, threads=1) as eng:
            replies.append(eng.chat(ask, max_tokens=6, temperature=0).content)
    assert replies[0] and replies[0] == replies[1]  # the same file under both names
    run = subprocess.run(
        [sys.executable, "-m", "edgereason", "run", "Name a color.", "-m", "smol:135m", "-c", "256"]
        + ["-t", "1", "--max-tokens", "6", "--temperature", "0", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["content"] == replies[0]
