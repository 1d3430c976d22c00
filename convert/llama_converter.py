"""llama.cpp's own HF → GGUF converter, from the llama.cpp that our llama-cpp-python vendors.

The converter is llama.cpp's ``convert_hf_to_gguf.py``: its model classes (the ``conversion`` package) and
``gguf-py`` (the ``gguf`` module), as they sit in ``vendor/llama.cpp`` of the official llama-cpp-python
sdist. ``install`` takes them from that sdist (pinned by version; pip checks the sha256 we know) into a
private folder under ``~/.cache/edgereason/``, with a manifest of every file's sha256. Nothing is
installed into site-packages, so no other package's files are overwritten, and conversion runs the same
llama.cpp revision as the runtime. ``activate`` verifies the folder against its manifest and puts it first
on ``sys.path`` for this process.

    python -m edgereason.convert.llama_converter install   # make setup runs this
    python -m edgereason.convert.llama_converter verify
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import sys
import tarfile
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from edgereason.errors import EdgeReasonError, MissingExtraError
from edgereason.peer import (
    cache_root,
    download_sdist,
    llama_cpp_python_version,
)

log = logging.getLogger(__name__)

# What the converter needs from vendor/llama.cpp, relative to it.
PARTS = ("conversion", "gguf-py/gguf", "convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "LICENSE")
MANIFEST = "MANIFEST.json"
_verified: set[Path] = set()


class ConverterInstallError(MissingExtraError):
    """llama.cpp's converter is not unpacked, or its files differ from what was unpacked."""

    def __init__(self, detail: str) -> None:
        EdgeReasonError.__init__(
            self, f"{detail}; run: python -m edgereason.convert.llama_converter install (make setup does)"
        )
        self.extra = "convert"


def converter_dir(version: str | None = None, cache: Path | None = None) -> Path:
    return (cache or cache_root()) / f"llama-convert-{version or llama_cpp_python_version()}"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file_hashes(root: Path) -> dict[str, str]:
    files = sorted(
        p for part in PARTS for p in ([root / part] if (root / part).is_file() else (root / part).rglob("*"))
    )
    return {
        p.relative_to(root).as_posix(): _digest(p)
        for p in files
        if p.is_file() and "__pycache__" not in p.parts
    }


def unpack(sdist: Path, sdist_sha256: str, dest: Path, version: str) -> Path:
    """Unpack the converter's parts of ``sdist`` into ``dest`` (replaced atomically) with a manifest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".llama-convert-") as tmp:
        stage = Path(tmp) / "root"
        with tarfile.open(sdist) as tar:
            prefix = None
            members = []
            for m in tar.getmembers():
                head, sep, rel = m.name.partition("/vendor/llama.cpp/")
                if not sep or not any(rel == p or rel.startswith(p + "/") for p in PARTS):
                    continue
                if m.issym() or m.islnk() or not (m.isfile() or m.isdir()):
                    continue  # plain files only
                prefix = head + "/vendor/llama.cpp/"
                members.append(m)
            if not members or prefix is None:
                raise ConverterInstallError(f"{sdist.name} has no vendor/llama.cpp converter")
            for m in members:
                m.name = m.name[len(prefix) :]
            tar.extractall(stage, members=members, filter="data")
        missing = [p for p in PARTS if not (stage / p).exists()]
        if missing:
            raise ConverterInstallError(f"{sdist.name} lacks {', '.join(missing)} in vendor/llama.cpp")
        manifest = {
            "llama_cpp_python": version,
            "sdist": sdist.name,
            "sdist_sha256": sdist_sha256,
            "files": _file_hashes(stage),
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        old = Path(tmp) / "old"
        if dest.exists():
            dest.rename(old)
        stage.rename(dest)
    _verified.discard(dest)
    return dest


def install(version: str | None = None, cache: Path | None = None, *, force: bool = False) -> Path:
    """Unpack the converter of llama-cpp-python ``version`` (the installed one) unless already there."""
    version = version or llama_cpp_python_version()
    dest = converter_dir(version, cache)
    if not force and (dest / MANIFEST).is_file():
        verify(dest)
        return dest
    with tempfile.TemporaryDirectory(prefix="edgereason-sdist-") as tmp:
        sdist, digest = download_sdist(version, Path(tmp))
        unpack(sdist, digest, dest, version)
    log.info("llama.cpp converter of llama-cpp-python %s unpacked in %s", version, dest)
    return dest


def verify(root: Path) -> dict[str, object]:
    """The manifest of ``root``, after checking every file against it (no file added, changed or missing)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ConverterInstallError(f"llama.cpp's converter is not unpacked in {root}") from exc
    if root in _verified:
        return dict(manifest)
    actual = _file_hashes(root)
    expected: dict[str, str] = manifest.get("files", {})
    changed = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
    if changed:
        raise ConverterInstallError(
            f"{root} differs from its manifest ({len(changed)} files, e.g. {changed[0]}); unpack it again with --force"
        )
    _verified.add(root)
    return dict(manifest)


def activate(version: str | None = None, cache: Path | None = None) -> Path:
    """Put the verified converter first on ``sys.path``; fails if another ``gguf`` is already imported."""
    root = converter_dir(version, cache)
    verify(root)
    gguf_py = root / "gguf-py"
    loaded = sys.modules.get("gguf")
    if loaded is not None:
        origin = Path(getattr(loaded, "__file__", "") or "").resolve()
        if gguf_py.resolve() not in origin.parents:
            raise ConverterInstallError(
                f"another `gguf` module ({origin}) is already imported in this process; "
                "conversion needs llama.cpp's own copy"
            )
    for path in (str(root), str(gguf_py)):
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
    return root


_private_gguf: ModuleType | None = None
_import_lock = threading.Lock()


def import_gguf() -> ModuleType:
    """llama.cpp's ``gguf`` module from the private folder, for reading and writing GGUF in this process.

    The PyPI ``gguf`` distribution (transformers' GGUF loader imports it) may be loaded in this process
    under the same name. The private copy is imported with ``gguf`` and ``gguf.*`` set aside for the
    duration, so its modules bind each other (gguf-py mixes relative and absolute imports), and then the
    previous entries are put back: both copies live side by side and neither replaces the other.
    """
    global _private_gguf
    with _import_lock:
        if _private_gguf is not None:
            return _private_gguf
        root = converter_dir()
        verify(root)
        names = [k for k in sys.modules if k == "gguf" or k.startswith("gguf.")]
        saved = {k: sys.modules.pop(k) for k in names}
        sys.path.insert(0, str(root / "gguf-py"))
        try:
            module = importlib.import_module("gguf")
            origin = Path(module.__file__ or "").resolve()
            if (root / "gguf-py").resolve() not in origin.parents:  # pragma: no cover - path order
                raise ConverterInstallError(f"imported {origin} instead of llama.cpp's gguf-py")
        finally:
            sys.path.remove(str(root / "gguf-py"))
            for k in [k for k in sys.modules if k == "gguf" or k.startswith("gguf.")]:
                del sys.modules[k]
            sys.modules.update(saved)
        _private_gguf = module
        return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_install = sub.add_parser("install", help="unpack the converter from the llama-cpp-python sdist")
    p_install.add_argument("--version", default=None, help="llama-cpp-python version (default: installed)")
    p_install.add_argument("--force", action="store_true", help="unpack again")
    sub.add_parser("verify", help="check the unpacked files against the manifest")
    sub.add_parser("path", help="print the converter folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "install":
            root = install(args.version, force=args.force)
            manifest = verify(root)
            print(
                f"{root} (llama-cpp-python {manifest['llama_cpp_python']}, sdist sha256 {manifest['sdist_sha256']})"
            )
        elif args.cmd == "verify":
            manifest = verify(converter_dir())
            print(f"ok: {len(manifest['files'])} files match {converter_dir() / MANIFEST}")  # type: ignore[arg-type]
        else:
            print(converter_dir())
    except EdgeReasonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["ConverterInstallError", "activate", "converter_dir", "import_gguf", "install", "verify"]
