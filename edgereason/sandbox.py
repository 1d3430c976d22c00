"""Run untrusted Python (a model's tool call) in a child process that cannot reach the host.

Each call starts a fresh interpreter in isolated mode (``-I -S``: no site-packages, no ``PYTHON*``
variables, no user or script directory on ``sys.path``; the standard library, ``math`` included,
still imports) with an empty environment, then confines it:

- **Namespaces** (Linux user namespaces, created by an unprivileged process): a network namespace
  with no interface up (no network, loopback included), a PID namespace with its own ``/proc`` (the
  host's processes and their environments are invisible; killing its first process ends them all),
  and a mount namespace where every mount is remounted read-only and the working directory is a
  fresh size-capped tmpfs (writes go there or nowhere; nothing reaches the host's disk).
- **Identity**: a server running as root drops the child to ``nobody`` (uid 65534) first; the
  child's user namespace maps only its own uid, and the code runs after an ``execve`` that leaves it
  no capabilities, with ``no_new_privs`` set.
- **Limits** (``resource``): CPU seconds, address space, processes (counted inside the sandbox's
  own user namespace), file size, open files, no core dumps; a wall-clock deadline kills the whole
  process group; output past a cap stops the run.

Where user namespaces cannot be made (a kernel or container that forbids them) the sandbox refuses
to run unless the operator passes ``unsafe=True`` (the future ``--unsafe-python-tool``): then only
the limits, the empty environment, the temporary directory and (under root) the ``nobody`` identity
apply; the code can use the network and write wherever ``nobody`` (or the server's user) may.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache

from .errors import EdgeReasonError, InvalidRequestError

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_CPU_S = 5
DEFAULT_MEMORY_MB = 512
DEFAULT_OUTPUT_LIMIT = 2000  # characters of output returned (and injected)
DEFAULT_DISK_MB = 16  # the working directory's tmpfs, and the largest file anywhere
DEFAULT_NPROC = 16  # processes inside one sandbox (its own user namespace)
DEFAULT_NOFILE = 64
MAX_CODE_BYTES = 100_000  # one execve argument holds at most 128 KiB
NOBODY = 65534
SETUP_FAILED = 97  # the bootstrap's exit status when it could not build the sandbox
_GRACE_S = 5.0  # how long a stopped or finished bootstrap may take to tear its namespace down
_FLOOD_BYTES = 65_536  # stop the child once it has written this much (or 4x the output limit)

# Runs in the sandboxed interpreter: the code's last expression is echoed like the REPL's, and an
# exception leaves only its last line, on stderr, with status 1.
_RUNNER = r"""
import ast, os, sys, traceback
sys.stderr = sys.stdout
code = sys.argv[1]
status = 0
try:
    tree = ast.parse(code, "<code>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    scope = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(tree, "<code>", "exec"), scope)
    if last is not None:
        value = eval(compile(last, "<code>", "eval"), scope)
        if value is not None:
            print(repr(value))
except SystemExit as exc:
    status = 0 if exc.code in (None, 0) else 1
    if status:
        sys.__stderr__.write(f"SystemExit: {exc.code}\n")
except BaseException as exc:
    status = 1
    line = traceback.format_exception_only(type(exc), exc)[-1].strip()
    sys.__stderr__.write(line + "\n")
try:
    sys.stdout.flush()
    sys.__stderr__.flush()
finally:
    os._exit(status)
"""

# Runs first, in a child started with an empty environment; reads its settings from stdin, builds
# the namespaces, forks the PID namespace's first process, which forks the process that execs the runner.
_BOOTSTRAP = r"""
import ctypes, json, os, resource, signal, stat, sys
cfg = json.loads(sys.stdin.read())
fd = os.open(os.devnull, os.O_RDONLY); os.dup2(fd, 0); os.close(fd)
libc = ctypes.CDLL(None, use_errno=True)
NEWNS, NEWUSER, NEWPID, NEWNET, NEWIPC, NEWUTS = 0x20000, 0x10000000, 0x20000000, 0x40000000, 0x08000000, 0x04000000
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, NOATIME, NODIRATIME, BIND, REC, PRIVATE, RELATIME, STRICTATIME = (
    1, 2, 4, 8, 32, 1024, 2048, 4096, 16384, 1 << 18, 1 << 21, 1 << 24)
KEEP = {"nosuid": NOSUID, "nodev": NODEV, "noexec": NOEXEC, "noatime": NOATIME,
        "nodiratime": NODIRATIME, "relatime": RELATIME, "strictatime": STRICTATIME}
def fail(msg):
    sys.stderr.write("sandbox setup failed: " + msg + "\n"); sys.stderr.flush(); os._exit(cfg["setup_failed"])
def check(ret, what):
    if ret != 0:
        err = ctypes.get_errno(); fail(f"{what}: {os.strerror(err)} (errno {err})")
def try_mount(src, target, fstype, flags, data):
    enc = lambda s: None if s is None else s.encode()
    return libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
def mount(src, target, fstype, flags, data):
    check(try_mount(src, target, fstype, flags, data), f"mount {target}")
def drop_to_nobody():
    os.setgroups([]); os.setgid(cfg["nobody"]); os.setuid(cfg["nobody"])
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: the uid change cleared it; /proc/self/uid_map needs it
def own_user_namespace():
    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(NEWUSER), "unshare(CLONE_NEWUSER)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as fh:
            fh.write(text)
def blocker(path):  # the first directory on the way that others may not enter
    cur = "/"
    for part in path.strip("/").split("/"):
        cur = os.path.join(cur, part)
        if not os.stat(cur).st_mode & stat.S_IXOTH:
            return cur
    return None
def expose(paths):  # nobody must reach the interpreter: an open tmpfs over its closed ancestor
    keep = [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]
    groups = {}
    for p in keep:
        b = blocker(p)
        if b is not None:
            groups.setdefault(b, []).append((p, os.open(p, os.O_PATH)))
    for b, held in groups.items():
        mount("tmpfs", b, "tmpfs", NOSUID | NODEV, "size=64k,mode=0755")
        for p, fd in held:
            os.makedirs(p, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", p, None, BIND | REC, None)
root = os.geteuid() == 0
work = cfg["workdir"]
if cfg["namespaces"]:
    if root:
        check(libc.unshare(NEWNS | NEWPID | NEWNET | NEWIPC | NEWUTS), "unshare")
    else:
        own_user_namespace()
        check(libc.unshare(NEWNS | NEWPID | NEWNET | NEWIPC | NEWUTS), "unshare")
    mount(None, "/", None, REC | PRIVATE, None)
    owner = cfg["nobody"] if root else os.getuid()
    mount("tmpfs", work, "tmpfs", NOSUID | NODEV, f"size={cfg['disk_mb']}m,mode=0700,uid={owner},gid={owner}")
    if root:
        expose(cfg["python_paths"])
    with open("/proc/self/mountinfo") as fh:
        mounts = [line.split() for line in fh]
    for fields in mounts:
        target = fields[4].encode().decode("unicode_escape")
        if target == work:
            continue
        flags = BIND | REMOUNT | RDONLY
        for opt in fields[5].split(","):
            flags |= KEEP.get(opt, 0)
        mount(None, target, None, flags, None)
    def relay(pid):  # wait for the child (reaping any orphans) and exit as it did
        while True:
            done, status = os.wait()
            if done == pid:
                code = os.waitstatus_to_exitcode(status)
                os._exit(code if code >= 0 else 128 - code)
    # Stopped by the server (SIGTERM), the bootstrap kills the namespace's first process, whose end
    # takes every process in the namespace with it; the bootstrap's own end then means all are gone.
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL) if pid else None)
    pid = 0
    pid = os.fork()
    if pid:
        relay(pid)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the bootstrap
    # This namespace's own /proc; where the kernel refuses one, an empty read-only tmpfs hides the host's.
    if try_mount("proc", "/proc", "proc", NOSUID | NODEV | NOEXEC, None) != 0:
        mount("tmpfs", "/proc", "tmpfs", RDONLY | NOSUID | NODEV | NOEXEC, "size=4k")
    if root:  # its own user namespace too, so the process limit counts this sandbox's processes only
        drop_to_nobody()
        own_user_namespace()
    # The namespace's first process ignores signals it has no handler for (SIGXCPU among them), so
    # it stays a waiter and the code runs in its child; when it exits, the kernel ends the rest.
    pid = os.fork()
    if pid:
        relay(pid)
    libc.prctl(1, signal.SIGKILL)
elif root:
    drop_to_nobody()
os.chdir(work)
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
for name, (soft, hard) in cfg["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (soft, hard))
os.execv(cfg["python"], [cfg["python"], "-I", "-S", "-X", "utf8", "-c", cfg["runner"], cfg["code"]])
"""


class SandboxUnavailableError(EdgeReasonError):
    """The OS does not let the Python tool isolate its code (and the operator did not opt out)."""


@dataclass(frozen=True)
class ToolResult:
    """One tool run: ``output`` is what a model would read (stdout, the last expression's value or
    the error's last line, truncated); ``error`` is set when the code failed or was stopped."""

    output: str
    ok: bool
    error: str | None
    truncated: bool
    wall_s: float
    isolated: bool  # False only for unsafe runs (no namespaces)


@lru_cache(maxsize=1)
def sandbox_unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (``None`` when they can); probed once per process."""
    if not sys.platform.startswith("linux"):
        return f"the Python tool's sandbox needs Linux namespaces; this is {sys.platform}"
    try:
        result = _run(
            "None",
            python=sys.executable,
            python_paths=_interpreter_paths(sys.executable),
            namespaces=True,
            timeout_s=20.0,
            cpu_s=5,
            memory_mb=DEFAULT_MEMORY_MB,
            output_limit=DEFAULT_OUTPUT_LIMIT,
        )
    except _SetupFailed as exc:
        return str(exc)
    return None if result.ok else f"the sandbox's probe run failed: {result.error}"


def run_python(
    code: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    cpu_s: int = DEFAULT_CPU_S,
    memory_mb: int = DEFAULT_MEMORY_MB,
    output_limit: int = DEFAULT_OUTPUT_LIMIT,
    unsafe: bool = False,
    python: str | None = None,
) -> ToolResult:
    """Run ``code`` in a fresh sandboxed interpreter and return what it printed.

    ``python`` is the interpreter that runs the code (default: this one; its standard library is
    what the code can import). Raises ``SandboxUnavailableError`` when namespaces cannot be made and
    ``unsafe`` is not set, or when an unsafe run as root has no interpreter ``nobody`` may start.
    Errors inside the code (exceptions, limits, timeouts) are results, never exceptions here.
    """
    if not isinstance(code, str):
        raise InvalidRequestError("code must be a string", param="code")
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES or "\x00" in code:
        raise InvalidRequestError(
            f"code must be at most {MAX_CODE_BYTES} bytes without NUL characters", param="code"
        )
    if timeout_s <= 0 or cpu_s < 1 or memory_mb < 32 or output_limit < 1:
        raise InvalidRequestError(
            "sandbox limits: timeout_s > 0, cpu_s >= 1, memory_mb >= 32, output_limit >= 1", param="code"
        )
    reason = sandbox_unavailable_reason()
    if reason is not None and not unsafe:
        raise SandboxUnavailableError(
            f"the Python tool cannot isolate code on this machine ({reason}); without a network, PID "
            "and mount namespace the code could reach the network, the host's processes and files. "
            "Enable unprivileged user namespaces, or pass --unsafe-python-tool (unsafe=True) to run "
            "it with resource limits only"
        )
    interpreter = python or sys.executable
    paths = _interpreter_paths(interpreter)
    if reason is not None and os.geteuid() == 0:
        closed = next((d for d in map(_closed_dir, paths) if d is not None), None)
        if closed is not None:  # with no mount namespace to open a way, nobody cannot start it
            raise SandboxUnavailableError(
                f"the unsafe Python tool runs code as uid {NOBODY}, which cannot enter {closed} to start "
                f"{interpreter}; pass an interpreter other users can run (e.g. /usr/bin/python3)"
            )
    try:
        return _run(
            code,
            python=interpreter,
            python_paths=paths,
            namespaces=reason is None,
            timeout_s=timeout_s,
            cpu_s=cpu_s,
            memory_mb=memory_mb,
            output_limit=output_limit,
        )
    except _SetupFailed as exc:  # worked at the probe, fails now: a real fault, not a user error
        raise SandboxUnavailableError(f"the Python tool's sandbox could not start: {exc}") from None


class _SetupFailed(Exception):
    pass


def _rlimits(cpu_s: int, memory_mb: int, namespaces: bool) -> dict[str, tuple[int, int]]:
    # Inside its own user namespace the process count starts from the sandbox's own processes;
    # without one it is every process of the uid, so leave room for those already running.
    uid = NOBODY if os.geteuid() == 0 else os.getuid()
    nproc = DEFAULT_NPROC + (0 if namespaces else _tasks_of(uid))
    disk = DEFAULT_DISK_MB * 1024 * 1024
    return {
        "RLIMIT_CPU": (cpu_s, cpu_s + 1),  # SIGXCPU at the soft limit, SIGKILL a second later
        "RLIMIT_AS": (memory_mb * 1024 * 1024,) * 2,
        "RLIMIT_FSIZE": (disk, disk),
        "RLIMIT_NOFILE": (DEFAULT_NOFILE, DEFAULT_NOFILE),
        "RLIMIT_CORE": (0, 0),
        "RLIMIT_NPROC": (nproc, nproc),
    }


def _tasks_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            count += int(fields.get("Threads", "1"))
    return count


def _interpreter_paths(python: str) -> list[str]:
    """The directories an interpreter needs: its own and its prefix (``lib/pythonX.Y`` below it)."""
    real = os.path.realpath(python)
    paths = {os.path.dirname(real), os.path.dirname(os.path.dirname(real)), os.path.dirname(python)}
    if python == sys.executable:
        paths |= {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}
    return sorted(paths)


def _closed_dir(path: str) -> str | None:
    """The first directory on the way to ``path`` that other users may not enter, if any."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        try:
            if not os.stat(current).st_mode & stat.S_IXOTH:
                return current
        except OSError:
            return current
    return None


def _run(
    code: str,
    *,
    python: str,
    python_paths: list[str],
    namespaces: bool,
    timeout_s: float,
    cpu_s: int,
    memory_mb: int,
    output_limit: int,
) -> ToolResult:
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="edgereason-py-")
    try:
        if os.geteuid() == 0:
            os.chown(workdir, NOBODY, NOBODY)
        config = {
            "code": code,
            "namespaces": namespaces,
            "workdir": os.path.realpath(workdir),
            "python": python,
            "python_paths": python_paths,
            "runner": _RUNNER,
            "rlimits": _rlimits(cpu_s, memory_mb, namespaces),
            "disk_mb": DEFAULT_DISK_MB,
            "nobody": NOBODY,
            "setup_failed": SETUP_FAILED,
        }
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-X", "utf8", "-c", _BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={},
            cwd=workdir,
            start_new_session=True,  # the wall-clock kill takes the whole group
            close_fds=True,
        )
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(config).encode())
            proc.stdin.close()
            stdout, stderr, stopped = _collect(proc, started + timeout_s, _flood_cap(output_limit))
            if stopped is not None and namespaces:
                proc.send_signal(signal.SIGTERM)  # the bootstrap kills the namespace and waits it out
            status = proc.wait(timeout=_GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            status = proc.wait()
        finally:
            _kill_group(proc)
            proc.wait()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if status < 0:  # killed by a signal (an unsafe run execs the code in this very process)
        status = 128 - status
    if status == SETUP_FAILED and stopped is None:
        lines = stderr.decode("utf-8", "replace").strip().splitlines()
        raise _SetupFailed(lines[-1] if lines else f"the bootstrap exited with status {status}")
    return _result(
        stdout,
        stderr,
        status,
        stopped,
        timeout_s,
        cpu_s,
        output_limit,
        time.monotonic() - started,
        namespaces,
    )


def _collect(proc: subprocess.Popen[bytes], deadline: float, cap: int) -> tuple[bytes, bytes, str | None]:
    """Read stdout and stderr until both close, the deadline passes or the output passes ``cap``."""
    out, err = bytearray(), bytearray()
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    stopped = None
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                stopped = "timeout"
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
            if len(out) + len(err) > cap:
                stopped = "flood"
                break
    finally:
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
    return bytes(out), bytes(err), stopped


def _flood_cap(output_limit: int) -> int:
    return max(_FLOOD_BYTES, 4 * output_limit)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the call's process group (all of an unsafe run, where no PID namespace holds it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _result(
    stdout: bytes,
    stderr: bytes,
    status: int,
    stopped: str | None,
    timeout_s: float,
    cpu_s: int,
    output_limit: int,
    wall_s: float,
    isolated: bool,
) -> ToolResult:
    text = stdout.decode("utf-8", "replace")
    err_lines = stderr.decode("utf-8", "replace").strip().splitlines()
    error: str | None = None
    if stopped == "timeout":
        error = f"TimeoutError: the code ran past the {timeout_s:g} s wall-clock limit and was stopped"
    elif stopped == "flood":
        error = (
            f"OutputLimitError: the code printed more than {_flood_cap(output_limit)} bytes and was stopped"
        )
    elif status == 128 + signal.SIGXCPU:
        error = f"TimeoutError: the code used its {cpu_s} s of CPU time and was stopped"
    elif status > 128:
        sig = status - 128
        name = signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}"
        why = " (the CPU hard limit, or out of memory)" if sig == signal.SIGKILL else ""
        error = f"the code was killed by {name}{why}"
    elif status != 0:
        error = err_lines[-1] if err_lines else f"the code exited with status {status}"
    truncated = len(text) > output_limit
    if truncated:  # keep the head and the tail (the last value is printed last)
        head, tail = text[: output_limit * 2 // 3], text[len(text) - output_limit // 3 :]
        text = f"{head}\n... [{len(text) - len(head) - len(tail)} characters cut] ...\n{tail}"
    if error is not None:
        text = (text if not text or text.endswith("\n") else text + "\n") + error
    return ToolResult(
        output=text.rstrip("\n"),
        ok=error is None,
        error=error,
        truncated=truncated,
        wall_s=wall_s,
        isolated=isolated,
    )
