"""The Python tool's sandbox: escapes end in a clear tool error, never a hang, and the caller is unharmed."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgereason import sandbox
from edgereason.errors import InvalidRequestError
from edgereason.sandbox import SandboxUnavailableError, ToolResult, run_python

SECRET = "edgereason-test-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module", autouse=True)
def namespaces() -> None:
    reason = sandbox.sandbox_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no namespaces on this machine: {reason}")


def _processes_with(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker`` (the code travels in the runner's argv)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found


def _workdirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("edgereason-py-")}


def run_escape(code: str, **limits: float) -> ToolResult:
    """Run ``code`` tagged with a marker; afterwards nothing of it may be alive or left on disk."""
    marker = "# escape-" + uuid.uuid4().hex
    before = _workdirs()
    started = time.monotonic()
    result = run_python(f"{code}\n{marker}", **limits)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    assert elapsed < limits.get("timeout_s", sandbox.DEFAULT_TIMEOUT_S) + 5, "the tool hung"
    assert _processes_with(marker) == [], "a sandboxed process outlived its call"
    assert _workdirs() <= before, "the temporary directory was left behind"
    assert run_python("6 * 7").output == "42", "the sandbox broke after an escape attempt"
    return result


# -- normal use --------------------------------------------------------------------------------------
def test_print_and_last_expression_value() -> None:
    r = run_python("x = 12 + 7\nprint('sum is', x)\nx * 2")
    assert (r.output, r.ok, r.error, r.truncated, r.isolated) == ("sum is 19\n38", True, None, False, True)
    assert r.wall_s > 0


def test_last_expression_none_prints_nothing_and_repr_is_used() -> None:
    assert run_python("print('a')\nNone").output == "a"
    assert run_python("'text'").output == "'text'"
    assert run_python("import math\nmath.comb(10, 3), math.sqrt(2) ** 2 == 2").output == "(120, False)"


def test_stdlib_math_modules_import() -> None:
    code = (
        "import math, fractions, decimal, statistics, itertools, functools, re\nstr(fractions.Fraction(3, 6))"
    )
    assert run_python(code).output == "'1/2'"


def test_exception_gives_its_last_line_after_the_output() -> None:
    r = run_python("print('before')\n{}['missing']")
    assert r.output == "before\nKeyError: 'missing'"
    assert (r.ok, r.error) == (False, "KeyError: 'missing'")
    assert run_python("1/0").error == "ZeroDivisionError: division by zero"


def test_syntax_error_is_a_tool_error() -> None:
    r = run_python("x = (1 +")
    assert not r.ok and r.error is not None and r.error.startswith("SyntaxError:")


def test_sys_exit() -> None:
    assert run_python("import sys\nprint('x')\nsys.exit(0)").ok
    r = run_python("import sys\nsys.exit(3)")
    assert (r.ok, r.error) == (False, "SystemExit: 3")


def test_stderr_is_part_of_the_output() -> None:
    assert run_python("import sys\nprint('to stderr', file=sys.stderr)").output == "to stderr"


def test_unicode_round_trips() -> None:
    r = run_python("s = 'héllo ☃ 数学'\nprint(s)\nlen(s)")
    assert r.output == "héllo ☃ 数学\n10"


def test_output_is_truncated_keeping_head_and_tail() -> None:
    r = run_python("print('A' * 5000)\nprint('the end')", output_limit=300)
    assert r.ok and r.truncated
    assert r.output.startswith("A" * 200)
    assert r.output.endswith("the end")
    assert "characters cut" in r.output
    assert len(r.output) < 400


def test_output_flood_is_stopped() -> None:
    r = run_escape("while True:\n    print('x' * 1000)", timeout_s=30)
    assert not r.ok and r.error is not None and r.error.startswith("OutputLimitError")
    assert r.wall_s < 25


def test_working_directory_is_empty_writable_and_fresh() -> None:
    r = run_python("import os\nprint(os.listdir('.'))\nopen('a.txt', 'w').write('hi')\nos.listdir('.')")
    assert r.output == "[]\n['a.txt']"
    assert run_python("import os\nos.listdir('.')").output == "[]"


def test_concurrent_calls_are_independent() -> None:
    results: dict[int, str] = {}

    def call(i: int) -> None:
        results[i] = run_python(
            f"open('f', 'w').write('{i}')\nimport time; time.sleep(0.2)\nopen('f').read()"
        ).output

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"'{i}'" for i in range(4)}


# -- escapes -----------------------------------------------------------------------------------------
def test_infinite_loop_is_stopped_by_cpu_time() -> None:
    r = run_escape("while True:\n    pass", timeout_s=60, cpu_s=1)
    assert r.error == "TimeoutError: the code used its 1 s of CPU time and was stopped"


def test_sleeping_loop_is_stopped_by_wall_time() -> None:
    r = run_escape("import time\nprint('started', flush=True)\nwhile True:\n    time.sleep(1)", timeout_s=2)
    assert r.output.startswith("started\n")
    assert r.error == "TimeoutError: the code ran past the 2 s wall-clock limit and was stopped"
    assert 2 <= r.wall_s < 6


def test_fork_bomb_hits_the_process_limit() -> None:
    r = run_escape("import os\nwhile True:\n    os.fork()", timeout_s=30)
    assert r.error == "BlockingIOError: [Errno 11] Resource temporarily unavailable"


def test_fork_bomb_that_survives_fork_failures_is_ended_with_the_call() -> None:
    code = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)"
    r = run_escape(code, timeout_s=3)
    assert r.error is not None and r.error.startswith("TimeoutError: the code ran past the 3 s")


def test_background_child_does_not_outlive_the_call() -> None:
    r = run_escape(
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\nprint('parent done')"
    )
    assert (r.output, r.ok) == ("parent done", True)


def test_ten_gigabyte_allocation_is_a_memory_error() -> None:
    r = run_escape("x = bytearray(10 * 1024 ** 3)")
    assert r.error == "MemoryError"
    r = run_escape("x = [0] * (10 ** 10 // 8)")
    assert r.error == "MemoryError"


@pytest.mark.parametrize(
    "target", ["/tmp/edgereason-escape-{tag}", "{cwd}/edgereason-escape-{tag}", "/edgereason-escape-{tag}"]
)
def test_writing_outside_its_directory_fails(target: str) -> None:
    path = target.format(tag=uuid.uuid4().hex, cwd=os.getcwd())
    r = run_escape(f"open({path!r}, 'w').write('escaped')")
    assert r.error is not None and r.error.startswith("OSError: [Errno 30] Read-only file system")
    assert not os.path.exists(path)


def test_directory_disk_space_is_capped() -> None:
    r = run_escape("open('big', 'wb').write(b'0' * (64 * 1024 * 1024))")
    assert r.error is not None and "[Errno 27] File too large" in r.error


def test_server_environment_is_invisible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEREASON_SECRET", SECRET)
    code = f"""
import os
print(dict(os.environ))
for pid in ('1', {os.getpid()!r}, 'self'):
    try:
        print(pid, open(f'/proc/{{pid}}/environ').read())
    except OSError as exc:
        print(pid, type(exc).__name__)
sorted(p for p in os.listdir('/proc') if p.isdigit())
"""
    r = run_escape(code)
    assert r.ok, r.output
    assert SECRET not in r.output and "EDGEREASON_SECRET" not in r.output
    assert f"{os.getpid()} FileNotFoundError" in r.output  # the host's processes are not in its /proc
    assert r.output.endswith("['1', '2']")  # only the sandbox's waiter and the code itself
    assert os.environ["EDGEREASON_SECRET"] == SECRET


@pytest.fixture
def listener() -> Iterator[tuple[int, list[object]]]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(conn)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_socket_to_loopback_fails(listener: tuple[int, list[object]]) -> None:
    port, accepted = listener
    with socket.create_connection(("127.0.0.1", port), timeout=2):  # the listener does listen
        pass
    time.sleep(0.3)
    assert len(accepted) == 1
    r = run_escape(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
    assert r.error == "OSError: [Errno 101] Network is unreachable"
    time.sleep(0.3)
    assert len(accepted) == 1


def test_no_capabilities_left() -> None:
    r = run_escape("[l.split()[1] for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapPrm'))]")
    assert r.output == "['0000000000000000', '0000000000000000']"
    r = run_escape("import os\nos.getuid() != 0, os.geteuid() != 0")
    assert r.output == "(True, True)"


# -- refusal, and bad input ---------------------------------------------------------------------------
def test_refuses_without_namespaces_unless_unsafe(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fault injection: the probe's answer on a machine that forbids namespaces.
    monkeypatch.setattr(sandbox, "sandbox_unavailable_reason", lambda: "unshare: Operation not permitted")
    with pytest.raises(
        SandboxUnavailableError, match=r"unshare: Operation not permitted.*--unsafe-python-tool"
    ):
        run_python("1 + 1")
    python = next(
        (p for p in (sys.executable, "/usr/bin/python3") if not sandbox._closed_dir(os.path.realpath(p))),
        None,
    )
    if os.geteuid() == 0 and python is None:
        pytest.skip("no interpreter that uid 65534 may start")
    monkeypatch.setenv("EDGEREASON_SECRET", SECRET)
    r = run_python("import os\nprint(sorted(os.environ))\n1 + 1", unsafe=True, python=python)
    assert (r.output, r.ok, r.isolated) == ("['LC_CTYPE']\n2", True, False)  # Python's own C.UTF-8 coercion
    assert run_python("bytearray(10 * 1024 ** 3)", unsafe=True, python=python).error == "MemoryError"
    r = run_python("import time\nwhile True:\n    time.sleep(1)", unsafe=True, timeout_s=2, python=python)
    assert r.error is not None and r.error.startswith("TimeoutError")


@pytest.fixture
def closed_python() -> Iterator[Path]:
    """A link to this interpreter inside a directory only its owner may enter (like /root)."""
    if os.geteuid() != 0:
        pytest.skip("only a root server drops the code to nobody")
    outer = Path(tempfile.mkdtemp(prefix="edgereason-test-"))
    outer.chmod(0o755)
    closed = outer / "closed"
    (closed / "bin").mkdir(parents=True)
    closed.chmod(0o700)
    (closed / "bin" / "python3").symlink_to(sys.executable)
    yield closed / "bin" / "python3"
    shutil.rmtree(outer)


def test_unsafe_run_as_root_refuses_an_interpreter_nobody_cannot_start(
    monkeypatch: pytest.MonkeyPatch, closed_python: Path
) -> None:
    closed = closed_python.parent.parent
    assert sandbox._closed_dir(str(closed / "bin" / "python3")) == str(closed)
    monkeypatch.setattr(sandbox, "sandbox_unavailable_reason", lambda: "unshare: Operation not permitted")
    with pytest.raises(
        SandboxUnavailableError, match=f"uid 65534, which cannot enter /\\S+ to start {closed_python};"
    ):
        run_python("1", unsafe=True, python=str(closed_python))


def test_namespaced_run_as_root_reaches_an_interpreter_in_a_closed_directory(closed_python: Path) -> None:
    r = run_python("import math\nmath.gcd(12, 18)", python=str(closed_python))
    assert (r.output, r.ok) == ("6", True)


@pytest.mark.parametrize(
    ("code", "limits"),
    [
        ("x" * (sandbox.MAX_CODE_BYTES + 1), {}),
        ("a\x00b", {}),
        ("1", {"timeout_s": 0}),
        ("1", {"memory_mb": 1}),
    ],
)
def test_bad_input_is_an_invalid_request(code: str, limits: dict[str, float]) -> None:
    with pytest.raises(InvalidRequestError):
        run_python(code, **limits)  # type: ignore[arg-type]


def test_mean_wall_time_per_call() -> None:
    run_python("None")
    n = 10
    started = time.monotonic()
    for _ in range(n):
        assert run_python("1 + 1").output == "2"
    mean = (time.monotonic() - started) / n
    print(f"sandbox mean wall time per call: {mean * 1000:.0f} ms")
    assert mean < 2.0
