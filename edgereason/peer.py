"""llama.cpp's own ``llama-server`` as a peer: built once from the llama.cpp source that our pinned
llama-cpp-python vendors, cached under ``~/.cache/edgereason/``, started on loopback with the same GGUF
and the same memory layout as ``edgereason serve``.

``python -m edgereason.peer build`` builds it and prints where it is. Runtime code: stdlib only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import http.client
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EdgeReasonError

log = logging.getLogger(__name__)

BINARY_ENV = "EDGEREASON_LLAMA_SERVER"
DIST_NAME = "llama-cpp-python"
# pyproject pins llama-cpp-python==0.3.36; used when it is not installed (e.g. building from a bare checkout).
PINNED_VERSION = "0.3.36"
# sha256 of the sdist as published (pip verifies it through --hash; a version not listed is recorded).
KNOWN_SDIST_SHA256 = {
    "0.3.36": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
}
DEFAULT_JOBS = 2
READY_TIMEOUT_S = 120.0

# llama-cpp-python's CMakeLists sets BUILD_SHARED_LIBS=On and LLAMA_CURL=OFF and otherwise keeps llama.cpp's
# defaults, and scikit-build-core builds Release: GGML_NATIVE=ON (-march=native), GGML_OPENMP=ON,
# GGML_CPU_REPACK=ON, GGML_LLAMAFILE=ON. We pass the same compute flags explicitly so a changed default in
# a later llama.cpp cannot make the two builds differ silently. Differences, none in the compute kernels:
# static libraries (one self-contained binary in the cache; the Python package's libraries are shared and
# -fPIC), no web UI (no npm, no download at build time), no OpenSSL (loopback HTTP only).
CMAKE_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=ON",
    "-DGGML_OPENMP=ON",
    "-DGGML_CPU_REPACK=ON",
    "-DGGML_LLAMAFILE=ON",
)


class PeerError(EdgeReasonError):
    """llama-server could not be found, built or started."""


def llama_cpp_python_version() -> str:
    """The installed llama-cpp-python's version (the pinned one when it is not installed)."""
    try:
        return importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        return PINNED_VERSION


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgereason"


def server_dir(version: str | None = None, cache: Path | None = None) -> Path:
    return (cache or cache_root()) / f"llama-server-{version or llama_cpp_python_version()}"


def find_llama_server(version: str | None = None, cache: Path | None = None) -> Path | None:
    """``$EDGEREASON_LLAMA_SERVER`` if set, else the cached build for our llama-cpp-python; None if absent."""
    env = os.environ.get(BINARY_ENV)
    if env:
        path = Path(env).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return path
        log.warning("%s=%s is not an executable file; ignoring it", BINARY_ENV, env)
    path = server_dir(version, cache) / "bin" / "llama-server"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def how_to_build() -> str:
    return (
        f"llama-server is not built: run 'python -m edgereason.peer build' (about 10 minutes on 2 cores; "
        f"cached under {server_dir()}) or set {BINARY_ENV} to a llama-server binary"
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run(cmd: Sequence[str], what: str, cwd: Path | None = None) -> None:
    log.info("%s: %s", what, " ".join(cmd))
    proc = subprocess.run(list(cmd), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise PeerError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def download_sdist(version: str, dest: Path) -> tuple[Path, str]:
    """llama-cpp-python's sdist through this interpreter's pip; returns its path and sha256.

    For a version in KNOWN_SDIST_SHA256 pip itself checks the hash (``--require-hashes``)."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(dest)]
    known = KNOWN_SDIST_SHA256.get(version)
    if known:
        req = dest / "requirements.txt"
        req.write_text(f"{DIST_NAME}=={version} --hash=sha256:{known}\n")
        cmd += ["--require-hashes", "-r", str(req)]
    else:
        cmd.append(f"{DIST_NAME}=={version}")
    _run(cmd, "pip download")
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise PeerError(f"pip download left no llama_cpp_python sdist in {dest}")
    sdist = found[0]
    digest = _sha256(sdist)
    if known and digest != known:
        raise PeerError(f"{sdist.name} has sha256 {digest}, expected {known}")
    if not known:
        log.warning("no known sha256 for %s %s; recording %s", DIST_NAME, version, digest)
    return sdist, digest


def extract_llama_cpp(sdist: Path, dest: Path) -> Path:
    """Extract only ``vendor/llama.cpp`` from the sdist; returns the llama.cpp source root."""
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
        if not members:
            raise PeerError(f"{sdist.name} has no vendor/llama.cpp")
        if sys.version_info >= (3, 12) or hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - old Pythons without extraction filters
            tar.extractall(dest, members=members)  # noqa: S202
    roots = list(dest.glob("*/vendor/llama.cpp"))
    if len(roots) != 1 or not (roots[0] / "CMakeLists.txt").is_file():
        raise PeerError(f"{sdist.name}: unexpected layout of vendor/llama.cpp")
    return roots[0]


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building llama-server (%s); waiting for it", path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_llama_server(
    version: str | None = None,
    *,
    jobs: int = DEFAULT_JOBS,
    cache: Path | None = None,
    sdist: Path | None = None,
    force: bool = False,
) -> Path:
    """Build llama-server from llama-cpp-python's vendored llama.cpp and move it into the cache.

    A lock file serialises concurrent builds (a second caller waits, then finds the binary). The build
    runs in a temporary directory next to the cache and the finished ``bin/`` directory is renamed into
    place, so a reader never sees a half-written binary."""
    version = version or llama_cpp_python_version()
    final = server_dir(version, cache)
    binary = final / "bin" / "llama-server"
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise PeerError(f"building llama-server needs '{tool}' on PATH")
    with _build_lock(final.parent / f"{final.name}.lock"):
        if binary.is_file() and not force:
            return binary
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.name}-build-") as tmp:
            work = Path(tmp)
            if sdist is None:
                sdist, digest = download_sdist(version, work / "sdist")
            else:
                digest = _sha256(sdist)
                known = KNOWN_SDIST_SHA256.get(version)
                if known and digest != known:
                    raise PeerError(f"{sdist} has sha256 {digest}, expected {known}")
            src = extract_llama_cpp(sdist, work / "src")
            build = work / "build"
            generator = ["-G", "Ninja"] if shutil.which("ninja") else []
            _run(["cmake", "-S", str(src), "-B", str(build), *generator, *CMAKE_FLAGS], "cmake configure")
            _run(
                ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)],
                "cmake build",
            )
            built = build / "bin" / "llama-server"
            if not built.is_file():
                raise PeerError(f"the build produced no {built}")
            stage = work / "stage"
            (stage / "bin").mkdir(parents=True)
            shutil.copy2(built, stage / "bin" / "llama-server")
            info = {
                "llama_cpp_python": version,
                "sdist": sdist.name,
                "sdist_sha256": digest,
                "llama_cpp_version": _server_version(built),
                "cmake_flags": list(CMAKE_FLAGS),
                "jobs": jobs,
                "build_seconds": round(time.monotonic() - t0, 1),
                "machine": platform.machine(),
                "compiler": _compiler_version(),
            }
            (stage / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
            if final.exists():  # --force: keep the old one until the new one is complete
                shutil.rmtree(final)
            os.rename(stage, final)
        log.info("built %s in %.0f s", binary, time.monotonic() - t0)
    return binary


def _server_version(binary: Path) -> str:
    """``llama-server --version`` (llama.cpp's version and commit as the sdist recorded them)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
        return " ".join(line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip())
    return ""


def _compiler_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["c++", "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0] if out else ""
    return ""


def build_info(binary: Path) -> dict[str, object]:
    """The build record written next to a cached binary (empty for a binary from elsewhere)."""
    path = binary.parent.parent / "build-info.json"
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


@dataclass(frozen=True)
class ServerLayout:
    """The serving layout both servers get: EdgeReason's n_ctx is per sequence (one KV stream each)."""

    threads: int
    ctx_per_slot: int
    slots: int
    n_batch: int = 512  # EdgeReason's llama.cpp backend: n_batch = n_ubatch = 512
    flash_attn: bool = False  # EdgeReason's default


def llama_server_args(
    model: Path | str,
    layout: ServerLayout,
    *,
    port: int,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """llama-server flags giving the same KV layout and compute settings as ``edgereason serve``.

    ``-c`` is llama-server's total context and it splits it evenly over ``-np`` slots, so ``-c`` is
    ``ctx_per_slot * slots``. With ``-np`` given, this llama.cpp already defaults to per-slot KV streams
    (``kv_unified`` is switched on only for ``-np`` auto); ``--no-kv-unified`` says so explicitly, matching
    EdgeReason's ``kv_unified=False``. Batch sizes and flash attention match EdgeReason's context
    (llama-server's defaults are -b 2048 -ub 512 -fa auto). Its host-side prompt cache (``--cache-ram``,
    8 GiB by default) stays on: it is part of what llama-server offers."""
    if layout.threads < 1 or layout.ctx_per_slot < 16 or layout.slots < 1:
        raise PeerError(f"invalid layout {layout}: need threads >= 1, ctx_per_slot >= 16, slots >= 1")
    return [
        "--model",
        str(model),
        "--host",
        host,
        "--port",
        str(port),
        "--threads",
        str(layout.threads),
        "--threads-batch",
        str(layout.threads),
        "--ctx-size",
        str(layout.ctx_per_slot * layout.slots),
        "--parallel",
        str(layout.slots),
        "--no-kv-unified",
        "--batch-size",
        str(layout.n_batch),
        "--ubatch-size",
        str(layout.n_batch),
        "--flash-attn",
        "on" if layout.flash_attn else "off",
        *extra_args,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    """A server process started on loopback; ``base_url`` has no trailing ``/v1``."""

    process: subprocess.Popen[bytes]
    port: int
    argv: list[str]
    log_path: Path
    base_url: str = field(init=False)

    def __post_init__(self) -> None:
        self.base_url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _health(port: int) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


@contextlib.contextmanager
def run_server(
    argv: Sequence[str], port: int, *, name: str, ready_timeout: float = READY_TIMEOUT_S
) -> Iterator[RunningServer]:
    """Start ``argv``, wait until ``GET /health`` answers 200 on ``port``, stop it on exit."""
    with tempfile.TemporaryDirectory(prefix="edgereason-peer-") as tmp:
        log_path = Path(tmp) / f"{name}.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        server = RunningServer(proc, port, list(argv), log_path)
        try:
            deadline = time.monotonic() + ready_timeout
            while _health(port) != 200:
                if proc.poll() is not None:
                    raise PeerError(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
                if time.monotonic() > deadline:
                    raise PeerError(f"{name} was not ready after {ready_timeout:.0f} s:\n{server.log_tail()}")
                time.sleep(0.1)
            yield server
        finally:
            stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def start_llama_server(
    model: Path | str,
    *,
    threads: int,
    ctx_per_slot: int,
    slots: int,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    binary: Path | None = None,
) -> Iterator[RunningServer]:
    """Run llama-server on 127.0.0.1 with the given GGUF and layout until the block exits."""
    binary = binary or find_llama_server()
    if binary is None:
        raise PeerError(how_to_build())
    port = port or free_port()
    layout = ServerLayout(threads=threads, ctx_per_slot=ctx_per_slot, slots=slots)
    argv = [str(binary), *llama_server_args(model, layout, port=port, extra_args=extra_args)]
    with run_server(argv, port, name="llama-server") as server:
        yield server


def process_tree_rss_mib(pid: int) -> float:
    """VmRSS of a process and all its descendants, in MiB (0 for a process that is gone)."""
    total_kib = 0
    stack = [pid]
    seen: set[int] = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
                    break
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
    return total_kib / 1024


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgereason.peer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build llama-server into the cache (no-op when it is there)")
    b.add_argument("--jobs", type=int, default=DEFAULT_JOBS)
    b.add_argument("--force", action="store_true", help="rebuild even when a binary is cached")
    b.add_argument("--sdist", type=Path, help="use this llama-cpp-python sdist instead of pip download")
    sub.add_parser("where", help="print the llama-server binary in use (exit 1 if none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "build":
            binary = build_llama_server(jobs=args.jobs, force=args.force, sdist=args.sdist)
        else:
            found = find_llama_server()
            if found is None:
                print(how_to_build(), file=sys.stderr)
                return 1
            binary = found
    except PeerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
