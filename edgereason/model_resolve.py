"""Model names to GGUF files where users already keep them: the Hugging Face hub cache (``org/repo``,
``org/repo:Q4_K_M``; downloaded with ``huggingface_hub`` when it is installed and the network allows)
and Ollama's local store (``llama3.2:1b``). Reads directory layouts only; nothing here imports the
hub client unless a download is needed."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError

DEFAULT_QUANT = "Q4_K_M"  # llama.cpp's -hf default
OLLAMA_REGISTRY = "registry.ollama.ai"
OLLAMA_NAMESPACE = "library"
OLLAMA_TAG = "latest"
OLLAMA_MODEL_MEDIA = "application/vnd.ollama.image.model"
# org/repo[:QUANT]: Hugging Face's repo-id characters, one slash.
_HF_NAME = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?::(?P<quant>[\w.-]+))?$")
# [host/][namespace/]model[:tag]
_OLLAMA_NAME = re.compile(
    r"^(?:(?P<prefix>[\w.:-]+(?:/[\w.-]+)?)/)?(?P<model>[\w.-]+)(?::(?P<tag>[\w.-]+))?$"
)
_QUANT_IN_NAME = re.compile(r"(?:^|[-._])(?P<q>I?Q\d(?:_[0-9A-Z]+)*|BF16|F16|F32)(?=$|[-._])", re.IGNORECASE)
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})$")


@dataclass(frozen=True)
class FoundModel:
    """A GGUF found in one of the stores, under the name that selects it."""

    name: str
    path: Path
    source: str  # "huggingface" | "ollama"


# -- Hugging Face hub cache ------------------------------------------------------------------------
def hf_cache_dir() -> Path:
    """The hub cache as ``huggingface_hub`` finds it: HF_HUB_CACHE, else HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub (default ~/.cache/huggingface/hub)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def parse_hf_name(name: str) -> tuple[str, str | None] | None:
    """``org/repo[:QUANT]`` -> (repo, quant), or None for another shape (paths such as ./x/y.gguf)."""
    if name.startswith((".", "/", "~")) or (name.endswith(".gguf") and ":" not in name):
        return None
    m = _HF_NAME.match(name)
    return (m["repo"], m["quant"]) if m else None


def quant_of(filename: str) -> str | None:
    """The quantisation named in a GGUF file name (``x-Q4_K_M.gguf`` -> ``Q4_K_M``)."""
    stem = _SHARD.sub("", filename.removesuffix(".gguf"))
    found = _QUANT_IN_NAME.findall(stem)
    return found[-1].upper() if found else None


def _repo_dir(repo: str, cache: Path) -> Path:
    return cache / ("models--" + repo.replace("/", "--"))


def _snapshot(repo_dir: Path) -> Path | None:
    """The snapshot refs/main points at, else the newest one."""
    snapshots = repo_dir / "snapshots"
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        rev = ref.read_text(encoding="utf-8").strip()
        if (snapshots / rev).is_dir():
            return snapshots / rev
    dirs = [d for d in snapshots.iterdir() if d.is_dir()] if snapshots.is_dir() else []
    return max(dirs, key=lambda d: d.stat().st_mtime) if dirs else None


def _ggufs(files: list[str]) -> list[str]:
    """Model GGUFs (no projector files), the first shard standing for a split model."""
    out = []
    for f in sorted(files):
        stem = f.removesuffix(".gguf")
        if not f.endswith(".gguf") or "mmproj" in Path(f).name.lower():
            continue
        shard = _SHARD.search(stem)
        if shard and int(shard.group(1)) != 1:
            continue
        out.append(f)
    return out


def pick_gguf(repo: str, files: list[str], quant: str | None) -> str:
    """The file ``org/repo[:QUANT]`` means among ``files`` (paths inside the repo)."""
    ggufs = _ggufs(files)
    if not ggufs:
        raise ModelLoadError(f"{repo} has no .gguf file; EdgeReason loads GGUF models from Hugging Face")
    wanted = quant or (DEFAULT_QUANT if len(ggufs) > 1 else None)
    if wanted is None:
        return ggufs[0]
    matches = [f for f in ggufs if (quant_of(Path(f).name) or "") == wanted.upper()]
    if not matches:  # a file name (or its stem) instead of a quant
        matches = [f for f in ggufs if Path(f).name in (wanted, f"{wanted}.gguf")]
    if len(matches) == 1:
        return matches[0]
    available = ", ".join(sorted({quant_of(Path(f).name) or Path(f).name for f in ggufs}))
    if not matches:
        raise ModelLoadError(
            f"{repo} has no {wanted} GGUF"
            + ("" if quant else " (the default)")
            + f"; add one of: {available} "
            f"(as {repo}:QUANT)"
        )
    raise ModelLoadError(f"{repo}:{wanted} matches several files ({', '.join(matches)}); name the file")


def find_hf_cached(repo: str, quant: str | None, cache: Path | None = None) -> Path | None:
    """The cached GGUF of ``repo`` (None when the repo is not cached; ModelLoadError when it is but
    holds no matching GGUF)."""
    snap = _snapshot(_repo_dir(repo, cache or hf_cache_dir()))
    if snap is None:
        return None
    files = [str(p.relative_to(snap)) for p in snap.rglob("*.gguf")]
    if not files:
        return None
    return snap / pick_gguf(repo, files, quant)


def download_hf(repo: str, quant: str | None) -> Path:
    """Download the GGUF ``repo[:quant]`` names into the hub cache (needs huggingface_hub and network)."""
    where = hf_cache_dir()
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelLoadError(f"{repo} is not in the Hugging Face cache ({where}) and HF_HUB_OFFLINE is set")
    try:
        import huggingface_hub
    except ImportError:
        raise ModelLoadError(
            f"{repo} is not in the Hugging Face cache ({where}); to download it: pip install huggingface_hub "
            "(or download the .gguf yourself and give its path)"
        ) from None
    try:
        files = huggingface_hub.list_repo_files(repo)
        filename = pick_gguf(repo, files, quant)
        return Path(huggingface_hub.hf_hub_download(repo, filename, cache_dir=str(where)))
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: one clear line
        raise ModelLoadError(
            f"{repo} is not in the Hugging Face cache ({where}) and downloading it failed: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def list_hf_cached(cache: Path | None = None) -> Iterator[FoundModel]:
    """Every GGUF in the hub cache, named ``org/repo:QUANT`` (or ``org/repo:FILE`` without a quant)."""
    cache = cache or hf_cache_dir()
    if not cache.is_dir():
        return
    for repo_dir in sorted(cache.glob("models--*--*")):
        repo = repo_dir.name.removeprefix("models--").replace("--", "/", 1)
        snap = _snapshot(repo_dir)
        if snap is None:
            continue
        for f in _ggufs([str(p.relative_to(snap)) for p in snap.rglob("*.gguf")]):
            tag = quant_of(Path(f).name) or Path(f).name
            yield FoundModel(f"{repo}:{tag}", snap / f, "huggingface")


# -- Ollama ------------------------------------------------------------------------------------------
def ollama_models_dir() -> Path:
    """OLLAMA_MODELS, else ~/.ollama/models."""
    return Path(os.environ.get("OLLAMA_MODELS") or "~/.ollama/models").expanduser()


def ollama_manifest(name: str, models: Path | None = None) -> Path | None:
    """The manifest file of ``[host/][namespace/]model[:tag]`` if Ollama holds it."""
    m = _OLLAMA_NAME.match(name)
    if m is None:
        return None
    prefix = (m["prefix"] or "").split("/") if m["prefix"] else []
    host, namespace = OLLAMA_REGISTRY, OLLAMA_NAMESPACE
    if len(prefix) == 2:
        host, namespace = prefix
    elif len(prefix) == 1:
        namespace = prefix[0]
    path = (
        (models or ollama_models_dir())
        / "manifests"
        / host
        / namespace
        / m["model"]
        / (m["tag"] or OLLAMA_TAG)
    )
    return path if path.is_file() else None


def ollama_blob(manifest: Path, models: Path | None = None) -> Path:
    """The GGUF blob a manifest's model layer points at."""
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"cannot read the Ollama manifest {manifest}: {exc}") from None
    digest = next(
        (x.get("digest") for x in layers if isinstance(x, dict) and x.get("mediaType") == OLLAMA_MODEL_MEDIA),
        None,
    )
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise ModelLoadError(f"the Ollama manifest {manifest} has no model layer")
    blob = (models or ollama_models_dir()) / "blobs" / digest.replace(":", "-", 1)
    if not blob.is_file():
        raise ModelLoadError(f"the Ollama model blob {blob.name} is missing; run 'ollama pull' again")
    return blob


def find_ollama(name: str, models: Path | None = None) -> Path | None:
    manifest = ollama_manifest(name, models)
    return ollama_blob(manifest, models) if manifest is not None else None


def list_ollama(models: Path | None = None) -> Iterator[FoundModel]:
    """Every model in Ollama's store, named as ``ollama run`` names it (library/ and :latest kept short)."""
    models = models or ollama_models_dir()
    root = models / "manifests"
    if not root.is_dir():
        return
    for manifest in sorted(p for p in root.glob("*/*/*/*") if p.is_file()):
        host, namespace, model, tag = manifest.relative_to(root).parts
        name = model if namespace == OLLAMA_NAMESPACE else f"{namespace}/{model}"
        if host != OLLAMA_REGISTRY:
            name = f"{host}/{namespace}/{model}"
        try:
            blob = ollama_blob(manifest, models)
        except ModelLoadError:
            continue
        yield FoundModel(f"{name}:{tag}", blob, "ollama")


# -- one entry point ---------------------------------------------------------------------------------
def resolve_name(name: str, *, download: bool = True) -> Path | None:
    """A model name (not a path) from the stores: the HF cache, Ollama, then a Hugging Face download for
    ``org/repo[:QUANT]`` names. None when ``name`` is no store's shape or no store holds it."""
    hf = parse_hf_name(name)
    if hf is not None:
        found = find_hf_cached(*hf)
        if found is not None:
            return found
    found = find_ollama(name)
    if found is not None:
        return found
    if hf is not None and download:
        return download_hf(*hf)
    return None
