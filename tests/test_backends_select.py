"""Backend selection by artefact (no model is loaded here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import edgereason as er
from edgereason.errors import InvalidRequestError, MissingExtraError, ModelLoadError


def test_auto_picks_by_artefact(tmp_path: Path, model_path: Path) -> None:
    assert er.pick_backend(None) == "llama.cpp"  # the embedded GGUF
    assert er.pick_backend(model_path) == "llama.cpp"
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "genai_config.json").write_text("{}")
    assert er.pick_backend(onnx) == "onnx"
    mlx = tmp_path / "mlx"
    mlx.mkdir()
    (mlx / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (mlx / "model.safetensors").write_bytes(b"")
    assert er.pick_backend(mlx) == "mlx"
    assert er.pick_backend("openai://127.0.0.1:8000/default") == "remote"
    assert er.pick_backend(model_path, "onnx") == "onnx"  # explicit wins (and load() explains the mismatch)


def test_bad_choices_are_explained(tmp_path: Path, model_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="unknown backend 'tensorrt'"):
        er.pick_backend(model_path, "tensorrt")
    with pytest.raises(InvalidRequestError, match="needs a model URL"):
        er.pick_backend(model_path, "remote")
    with pytest.raises(InvalidRequestError, match="is a remote model"):
        er.pick_backend("openai://h:1/m", "mlx")
    with pytest.raises(ModelLoadError, match="no model format"):
        er.pick_backend(tmp_path)
    with pytest.raises(ModelLoadError, match="is a GGUF file"):
        er.load(model_path, backend="mlx")
    with pytest.raises(ModelLoadError, match="is a folder"):
        er.load(tmp_path, backend="llama.cpp")
    with pytest.raises(InvalidRequestError, match="loads its own adapters"):
        er.load("openai://127.0.0.1:9/m", adapters={"a": "x.gguf"})


@pytest.mark.parametrize(
    ("module", "marker", "extra"),
    [("mlx", "config.json", "mlx"), ("onnxruntime_genai", "genai_config.json", "onnx")],
)
def test_missing_extra_names_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, marker: str, extra: str
) -> None:
    (tmp_path / marker).write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, f"{module}.core", None)
    with pytest.raises(MissingExtraError, match=rf"pip install 'edgereason\[{extra}\]'"):
        er.load(tmp_path)
