"""llama.cpp's converter unpacked from the llama-cpp-python sdist: manifest, verification, activation."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from edgereason.convert import llama_converter as lc

ROOT = "llama_cpp_python-9.9.9/vendor/llama.cpp/"
FILES = {
    "conversion/__init__.py": "MARK = 'conversion'\n",
    "gguf-py/gguf/__init__.py": "MARK = 'private gguf'\n",
    "convert_hf_to_gguf.py": "# converter\n",
    "convert_lora_to_gguf.py": "# lora converter\n",
    "LICENSE": "MIT\n",
    "src/llama.cpp": "// not needed by the converter\n",
}


def fake_sdist(path: Path, files: dict[str, str] = FILES, *, symlink: bool = False) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(ROOT + rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            link = tarfile.TarInfo(ROOT + "conversion/evil.py")
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc/passwd"
            tar.addfile(link)
    return path


def test_unpack_keeps_only_the_converter_and_records_hashes(tmp_path: Path) -> None:
    dest = lc.unpack(fake_sdist(tmp_path / "s.tar.gz", symlink=True), "abc", tmp_path / "conv", "9.9.9")
    manifest = lc.verify(dest)
    assert manifest["sdist_sha256"] == "abc" and manifest["llama_cpp_python"] == "9.9.9"
    assert sorted(manifest["files"]) == sorted(k for k in FILES if k != "src/llama.cpp")  # type: ignore[arg-type]
    assert not (dest / "src").exists() and not (dest / "conversion" / "evil.py").exists()


def test_verify_detects_a_changed_added_or_missing_file(tmp_path: Path) -> None:
    sdist = fake_sdist(tmp_path / "s.tar.gz")
    for change in ("edit", "add", "remove"):
        dest = lc.unpack(sdist, "abc", tmp_path / f"conv-{change}", "9.9.9")
        target = dest / "gguf-py" / "gguf" / "__init__.py"
        if change == "edit":
            target.write_text("MARK = 'tampered'\n")
        elif change == "add":
            (dest / "conversion" / "extra.py").write_text("x = 1\n")
        else:
            target.unlink()
        with pytest.raises(lc.ConverterInstallError, match="differs from its manifest"):
            lc.verify(dest)


def test_missing_converter_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(lc.ConverterInstallError, match="llama_converter install"):
        lc.verify(tmp_path / "nothing")


def test_sdist_without_converter_is_refused(tmp_path: Path) -> None:
    sdist = fake_sdist(tmp_path / "s.tar.gz", {"README.md": "no vendor tree\n"})
    with pytest.raises(lc.ConverterInstallError, match="no vendor/llama.cpp converter"):
        lc.unpack(sdist, "abc", tmp_path / "conv", "9.9.9")


def test_activate_puts_the_private_gguf_first_and_refuses_a_foreign_one(tmp_path: Path) -> None:
    """In a child process: the private gguf wins over sys.path; an already imported gguf is refused."""
    lc.unpack(fake_sdist(tmp_path / "s.tar.gz"), "abc", tmp_path / "llama-convert-9.9.9", "9.9.9")
    foreign = tmp_path / "site" / "gguf"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text("MARK = 'site-packages gguf'\n")
    code = f"""
import sys
sys.path.insert(0, {str(tmp_path / "site")!r})
from pathlib import Path
from edgereason.convert import llama_converter as lc
lc.activate("9.9.9", Path({str(tmp_path)!r}))
import gguf, conversion
print(gguf.MARK, conversion.MARK)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "private gguf conversion"
    code_foreign = code.replace('lc.activate("9.9.9"', 'import gguf\nlc.activate("9.9.9"')
    proc = subprocess.run([sys.executable, "-c", code_foreign], capture_output=True, text=True)
    assert proc.returncode != 0 and "another `gguf` module" in proc.stderr


def test_the_installed_converter_matches_its_manifest() -> None:
    """make setup unpacked the real converter of the llama-cpp-python we run."""
    root = lc.converter_dir()
    if not (root / lc.MANIFEST).is_file():
        pytest.skip(f"llama.cpp's converter is not unpacked in {root}: run make setup")
    manifest = lc.verify(root)
    assert manifest["llama_cpp_python"] == lc.llama_cpp_python_version()
    assert len(str(manifest["sdist_sha256"])) == 64
    assert (root / "conversion" / "__init__.py").is_file() and (
        root / "gguf-py" / "gguf" / "__init__.py"
    ).is_file()


def test_private_gguf_lives_beside_the_pypi_gguf() -> None:
    """transformers' GGUF loader imports the PyPI ``gguf``; adapter export reads and writes with llama.cpp's."""
    root = lc.converter_dir()
    if not (root / lc.MANIFEST).is_file():
        pytest.skip(f"llama.cpp's converter is not unpacked in {root}: run make setup")
    code = """
import sys, gguf
from edgereason.convert import llama_converter as lc
private = lc.import_gguf()
import gguf as again
print(again is gguf, private is not gguf, private.__file__.startswith(str(lc.converter_dir())))
print(private.GGUFReader.__module__, sys.modules['gguf'].__file__ == gguf.__file__)
"""
    pytest.importorskip("gguf")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "True", "True", "gguf.gguf_reader", "True"]
