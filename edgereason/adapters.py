"""LoRA adapter specs from the command line and the server: ``NAME=PATH[:SCALE]``, adapter folders, safe paths,
and PEFT folders converted to GGUF on the fly."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidRequestError, MissingExtraError, ModelLoadError
from .gguf_meta import read_gguf_info
from .options import MAX_ADAPTER_SCALE

log = logging.getLogger(__name__)

PEFT_CONFIG = "adapter_config.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Selects the base model by model name (server), so an adapter by this name could never be reached.
RESERVED_ADAPTER_NAMES = frozenset({"default"})


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: Path
    scale: float = 1.0  # the scale a request gets when it selects the adapter by model name


def check_adapter_name(name: str, param: str = "adapter", reserved: Collection[str] = ()) -> str:
    """``name`` if it can name an adapter; ``reserved`` adds names taken by the model (its name, aliases)."""
    if not _NAME.match(name):
        raise InvalidRequestError(
            f"invalid adapter name {name!r}: use letters, digits, '.', '_' or '-' (at most 128)", param=param
        )
    if name in RESERVED_ADAPTER_NAMES or name in reserved:
        raise InvalidRequestError(
            f"the adapter name {name!r} is reserved: it names the base model; pick another name", param=param
        )
    return name


def parse_adapter_spec(text: str) -> AdapterSpec:
    """``NAME=PATH`` or ``NAME=PATH:SCALE`` (a trailing ``:number`` is the scale, in [-4, 4])."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise InvalidRequestError(f"expected NAME=PATH[:SCALE], got {text!r}", param="adapter")
    path, scale = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            scale = float(tail)
            path = head
        except ValueError:
            pass  # a colon in the path itself
    if not -MAX_ADAPTER_SCALE <= scale <= MAX_ADAPTER_SCALE:
        raise InvalidRequestError(f"adapter {name!r}: scale {scale} is outside [-4, 4]", param="adapter")
    return AdapterSpec(check_adapter_name(name), Path(path).expanduser(), scale)


def scan_adapter_dir(directory: Path, max_bytes: int | None = None) -> list[AdapterSpec]:
    """Every LoRA adapter GGUF directly in ``directory``, named by file stem (other GGUFs are skipped).

    Files the runtime endpoint would refuse are skipped with a warning: symlinks resolving outside the
    folder, files over ``max_bytes``, reserved names.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise ModelLoadError(f"adapter directory {directory} does not exist")
    found: list[AdapterSpec] = []
    for path in sorted(directory.glob("*.gguf")):
        try:
            resolved = inside_dir(directory, path.name, max_bytes)
            if not read_gguf_info(resolved).is_adapter or not _NAME.match(path.stem):
                continue
            check_adapter_name(path.stem)
        except InvalidRequestError as exc:
            log.warning("adapter directory: skipping %s: %s", path.name, exc)
            continue
        except ModelLoadError:
            continue  # unreadable files are reported when someone asks for them by name
        found.append(AdapterSpec(path.stem, resolved))
    return found


def inside_dir(directory: Path, requested: str | Path, max_bytes: int | None = None) -> Path:
    """``requested`` (relative to ``directory``, or absolute) as a file that really lies inside ``directory``.

    Refuses ``..`` components and anything that resolves outside the folder (absolute paths elsewhere,
    symlinks pointing out), so a request can never make the server open an arbitrary file; and files over
    ``max_bytes``. The one check for both the runtime endpoint and ``--adapter-dir``'s startup scan;
    messages name the file, never the server's directories.
    """
    text = str(requested)
    name = Path(text).name or text
    if not text or "\x00" in text:
        raise InvalidRequestError("lora_path is empty", param="lora_path")
    if ".." in Path(text).parts:
        raise InvalidRequestError("lora_path may not contain '..'", param="lora_path")
    root = Path(directory).expanduser().resolve()
    candidate = Path(text) if Path(text).is_absolute() else root / text
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise InvalidRequestError(
            f"{name!r} resolves outside the adapter directory (a symlink or a path elsewhere)",
            param="lora_path",
        )
    if not resolved.is_file():
        raise InvalidRequestError(f"no adapter file {name!r} in the adapter directory", param="lora_path")
    size = resolved.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise InvalidRequestError(
            f"adapter file {name!r} has {size / 2**20:.1f} MB, over the {max_bytes / 2**20:g} MB limit "
            "(--max-adapter-mb)",
            param="lora_path",
        )
    return resolved


def is_peft_dir(path: str | Path) -> bool:
    return (Path(path).expanduser() / PEFT_CONFIG).is_file()


def adapter_gguf(path: str | Path, base_model: Path) -> Path:
    """The LoRA GGUF to load for ``path``: the file itself, or a PEFT folder converted for ``base_model``.

    Conversion needs the convert extra (torch, safetensors, gguf); the result is cached under
    ``~/.cache/edgereason/adapters`` keyed by the adapter's files and the base, so it runs once.
    """
    path = Path(path).expanduser()
    if not is_peft_dir(path):
        return path
    how = (
        "install the convert extra to convert it on load (pip install 'edgereason[convert]'), or convert "
        f"it yourself: python -m edgereason.convert.lora_export {path} --base {base_model} -o ADAPTER.gguf"
    )
    try:
        from .convert.lora_export import cached_peft_gguf

        log.info("PEFT adapter %s: converting for %s (cached)", path, base_model.name)
        return cached_peft_gguf(path, base_model)
    except (ImportError, MissingExtraError) as exc:
        raise ModelLoadError(f"{path} is a PEFT adapter folder ({exc}); {how}") from exc
