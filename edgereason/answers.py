"""Final-answer extraction and normalisation for reasoning-model outputs.

The rules follow the usual GSM8K/MATH graders (lm-eval-harness flexible extract, Hendrycks
``strip_string``, Qwen2.5-Math ``math_equal``) but stay stdlib-only. Every scan is a single
regex pass or a bounded window, so a 200k-character output costs milliseconds, not minutes.
``math-verify`` (the ``eval`` extra) is used for symbolic equivalence when it is importable.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

AnswerFormat = Literal["auto", "number", "boxed", "choice", "text"]

# An answer statement is never longer than this; bounding each look keeps every scan linear.
_WINDOW = 600
_SIG_DIGITS = 10

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b\s*")
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.S)
_BARE_BOX_RE = re.compile(r"[^\s${}]+")
_GSM8K_RE = re.compile(r"####[ \t]*(\S[^\n]*)")
_ANSWER_WORD_RE = re.compile(r"\banswer\b", re.I)
_FINAL_BEFORE_RE = re.compile(r"final[\s*_#]*$", re.I)
_IS_AFTER_RE = re.compile(
    r"[ \t]*(?:\*\*|__)?[ \t]*(?:(?:is|was|would be|should be|will be)\b[ \t]*:?|:)[ \t]*(?:\*\*|__)?", re.I
)
_HEADER_AFTER_RE = re.compile(r"[ \t]*(?:\*\*|__)?[ \t]*(?=\n|$)")
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)|[,;]\s+(?=[A-Za-z]{2,}\b)")
_CHOICE_STMT_RE = re.compile(
    r"\b(?i:option|choice)\s*:?\s*\(?([A-E])\)?(?![A-Za-z])|\(([A-E])\)\s+is\s+(?:the\s+)?correct"
)
_PAREN_LETTER_RE = re.compile(r"\(([A-Ea-e])\)")
_LAST_NUM_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_PROSE_WORD_RE = re.compile(r"[A-Za-z]{3,}")
_PLAIN_NUM_RE = re.compile(r"-?\d+(?:\.\d+)?")
_EQUATION_RE = re.compile(
    r"=\s*(?:\\?\$)?\s*(-?\\[dt]?frac\{[^{}]{1,40}\}\{[^{}]{1,40}\}|-?\d[\d,]*(?:\.\d+)?)(?!\d|\.\d|\s*[-+*/×^(])"
)

_TEXT_WRAP_RE = re.compile(
    r"\\(?:text|textbf|textrm|textit|textnormal|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}"
)
_SPACING_RE = re.compile(r"\\[!,;:>]|\\left(?![A-Za-z])|\\right(?![A-Za-z])|\\displaystyle")
_WIDE_SPACE_RE = re.compile(r"\\(?:q?quad)(?![A-Za-z])|\\ ")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])")
_LATEX_FRAC_RE = re.compile(
    r"\\[dt]?frac\s*\{\s*([-+]?[\d.]+)\s*\}\s*\{\s*([-+]?[\d.]+)\s*\}|\\[dt]?frac\s*(\d)\s*(\d)"
)
_CHOICE_RE = re.compile(
    r"(?:(?i:option|choice)\s*)?(?:\(([A-Ea-e])\)(?:\s.*)?|([A-E])(?:[.):](?:\s.*)?)?)", re.S
)
_WORDS_RE = re.compile(r"[A-Za-z][A-Za-z' -]*")
_LATEX_SPACE_RE = re.compile(r"(?<![A-Za-z])\s+|\s+(?![A-Za-z])")

_INT_RE = re.compile(r"[-+]?\d+")
_DEC_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_FRAC_RE = re.compile(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))/([-+]?(?:\d+(?:\.\d*)?|\.\d+))")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_UNIT_RE = re.compile(r"([-+]?(?:\d[\d.,/]*|\.\d+)%?)\s*([A-Za-z][A-Za-z .^/\d-]*)")
# Single letters after a number are usually variables ("5 x"), not units; these few are units.
_SINGLE_LETTER_UNITS = frozenset("mgshl")
_NOT_UNITS = frozenset({"pi", "sqrt", "times", "i", "e"})


@dataclass(frozen=True)
class Extracted:
    """One extracted answer: the matched substring, its canonical form and the rule that found it.

    ``source`` is one of "boxed", "gsm8k", "answer_is", "final_answer", "choice", "last_number",
    "equation" (only from :func:`last_reasoning_answer`) or "text".
    """

    raw: str
    normalized: str
    value: float | None
    source: str


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    tail = deque(pattern.finditer(text), maxlen=1)
    return tail[0] if tail else None


def _brace_pairs(text: str, start: int) -> dict[int, int]:
    """Map each ``{`` at or after ``start`` to its matching ``}``; escaped braces are skipped."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_TOKEN_RE.finditer(text, start):
        ch = m.group()
        if ch == "{":
            stack.append(m.start())
        elif ch == "}" and stack:
            pairs[stack.pop()] = m.start()
    return pairs


def _find_boxed(text: str) -> tuple[str, int] | None:
    """Content and position of the last well-formed, non-empty ``\\boxed{..}`` / ``\\fbox{..}``."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    pairs = _brace_pairs(text, matches[0].end())
    for m in reversed(matches):
        i = m.end()
        if text.startswith("{", i):
            close = pairs.get(i)
            if close is not None and text[i + 1 : close].strip():
                return text[i + 1 : close], m.start()
        elif m.group()[-1:].isspace() and (bare := _BARE_BOX_RE.match(text, i)):  # "\boxed 5"
            return bare.group(), m.start()
    return None


def _find_gsm8k(text: str) -> tuple[str, int] | None:
    last = _last_match(_GSM8K_RE, text)
    return (last.group(1)[:_WINDOW].strip(), last.start()) if last else None


def _first_content_line(window: str) -> str:
    """The first line with real content, skipping bare delimiters such as ``\\[`` or ``**``."""
    for line in window.split("\n")[:6]:
        if line.replace("\\[", "").replace("\\(", "").strip(" \t*$:#_"):
            return line.strip()
    return ""


def _cut_sentence(s: str) -> str:
    m = _SENTENCE_END_RE.search(s)
    return (s[: m.start()] if m else s).strip()


def _statements(text: str) -> Iterator[tuple[str, str, int]]:
    """Yield ``(kind, raw, pos)`` for answer statements, last first; kind is answer_is/final_answer."""
    for m in reversed(list(_ANSWER_WORD_RE.finditer(text))):
        is_final = _FINAL_BEFORE_RE.search(text, max(0, m.start() - 12), m.start()) is not None
        kind = "final_answer"
        after = _IS_AFTER_RE.match(text, m.end())
        if after and (not is_final or any(c.isalpha() for c in after.group())):
            kind = "answer_is"  # "the (final) answer is ..." and "answer: ..."; "Final Answer:" is a header
        elif after is None and is_final:
            after = _HEADER_AFTER_RE.match(text, m.end())
        if after is None:
            continue
        raw = _cut_sentence(_first_content_line(text[after.end() : after.end() + _WINDOW]))
        if raw:
            yield kind, raw, m.start()


def _find_statement(text: str, kind: str) -> tuple[str, int] | None:
    return next(((raw, pos) for k, raw, pos in _statements(text) if k == kind), None)


def _find_last_number(text: str) -> tuple[str, int] | None:
    last = None
    for m in _LAST_NUM_RE.finditer(text):
        if any(c.isdigit() for c in m.group()):
            last = m
    if last is None:
        return None
    token = last.group().strip(".,") + ("%" if text.startswith("%", last.end()) else "")
    if _numeric(_clean(token)) is None:  # "1,2,3" or "1.2.3": keep the last plain number inside it
        token = _PLAIN_NUM_RE.findall(token)[-1]
    return token, last.start()


def _find_choice_statement(text: str) -> tuple[str, int] | None:
    last = _last_match(_CHOICE_STMT_RE, text)
    return ((last.group(1) or last.group(2)), last.start()) if last else None


def _canon(v: float) -> str:
    """Canonical key of a float: ints print as ints, the rest rounded to 10 significant digits."""
    if not math.isfinite(v):
        return str(v)
    r = float(f"{v:.{_SIG_DIGITS}g}")
    if r == int(r) and abs(r) < 1e15:
        return str(int(r))
    return f"{r:.{_SIG_DIGITS}g}"


def _parse_number(s: str) -> tuple[str, float] | None:
    s = s.replace(" ", "")
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    try:
        if _INT_RE.fullmatch(s):
            n = int(s)
            return str(n), float(n)
        if _DEC_RE.fullmatch(s):
            v = float(s)
            return (_canon(v), v) if math.isfinite(v) else None
        if m := _FRAC_RE.fullmatch(s):
            f = Fraction(m.group(1)) / Fraction(m.group(2))
            key = str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"
            return key, float(f)
    except (ValueError, ZeroDivisionError, OverflowError):  # int() digit limit, x/0, huge ints
        return None
    return None


def _is_unit(words: str) -> bool:
    first = words.split()[0].lower()
    return first in _SINGLE_LETTER_UNITS if len(first) == 1 else first not in _NOT_UNITS


def _numeric(s: str) -> tuple[str, float] | None:
    """Parse a cleaned answer as a number, dropping trailing unit words; percentages keep a ``%``."""
    s = s.strip().removeprefix("+")
    parsed = _parse_number(s)
    pct = False
    if parsed is None:
        m = _UNIT_RE.fullmatch(s)
        if m and _is_unit(m.group(2)):
            s, pct = m.group(1), m.group(2).lower().startswith("percent")
        if s.endswith("%"):
            s, pct = s[:-1].strip(), True
        parsed = _parse_number(s)
    if parsed is None:
        return None
    key, value = parsed
    return (key + "%", value) if pct else (key, value)


def _strip_outer_braces(s: str) -> str:
    for _ in range(8):
        if not (s.startswith("{") and s.endswith("}")) or _brace_pairs(s, 0).get(0) != len(s) - 1:
            break
        s = s[1:-1].strip()
    return s


def _frac_to_slash(m: re.Match[str]) -> str:
    return f"{m.group(1) or m.group(3)}/{m.group(2) or m.group(4)}"


def _clean(raw: str) -> str:
    """Strip LaTeX/markdown decoration that never changes an answer's meaning."""
    s = raw.strip().replace("\u2212", "-")
    if ("\\boxed" in s or "\\fbox" in s) and (found := _find_boxed(s)):
        s = found[0]
    for _ in range(2):
        s = _TEXT_WRAP_RE.sub(r"\1", s)
    s = _SPACING_RE.sub("", s)
    s = _WIDE_SPACE_RE.sub(" ", s)
    s = _DEGREE_RE.sub("", s)
    s = s.replace("\\%", "%").replace("\\$", "").replace("$", "").replace("**", "").replace("{,}", ",")
    s = s.strip()
    for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right):
            s = s[2:-2].strip()
    s = _strip_outer_braces(s).rstrip(".").strip()
    return _LATEX_FRAC_RE.sub(_frac_to_slash, s)


def _choice_letter(cleaned: str) -> str | None:
    m = _CHOICE_RE.fullmatch(cleaned)
    return (m.group(1) or m.group(2)).upper() if m else None


def normalize_answer(raw: str) -> tuple[str, float | None]:
    """Canonical string and numeric value of an answer; the value is None for non-numeric answers.

    Numbers print canonically ("1,234.0" -> "1234", "\\frac{2}{4}" -> "1/2"); percentages keep a
    trailing "%" with the value of the number before it; choice letters become "A".."E"; plain words
    are lower-cased; other LaTeX keeps its content with insignificant spaces removed.
    """
    s = _clean(raw)
    if not s:
        return "", None
    if "=" in s and _numeric(tail := s.rsplit("=", 1)[1]) is not None:  # "x = 5" -> "5", not "y = 2x"
        s = tail
    if num := _numeric(s):
        return num
    if letter := _choice_letter(s):
        return letter, None
    if _WORDS_RE.fullmatch(s):
        return " ".join(s.lower().split()), None
    return " ".join(_LATEX_SPACE_RE.sub("", s).split()), None


def _make(raw: str, source: str) -> Extracted | None:
    key, value = normalize_answer(raw)
    return Extracted(raw=raw.strip(), normalized=key, value=value, source=source) if key else None


def _make_text(raw: str, source: str) -> Extracted | None:
    key = " ".join(_clean(raw).split()).casefold()
    return Extracted(raw=raw.strip(), normalized=key, value=None, source=source) if key else None


def _is_letter(e: Extracted) -> bool:
    return e.value is None and len(e.normalized) == 1 and e.normalized in "ABCDE"


def _make_statement(raw: str, source: str, force_number: bool) -> Extracted | None:
    """A statement's answer; prose yields its last number ("Janet makes $18 a day" -> 18) or None.

    Prose without a number is usually a false hit ("the answer: we first compute"), so it is skipped.
    With ``force_number`` any non-boxed statement yields its last number.
    """
    e = _make(raw, source)
    if e is None or e.value is not None or (not force_number and (source == "boxed" or _is_letter(e))):
        return e
    prose = len(_PROSE_WORD_RE.findall(raw)) >= 2 and "\\" not in raw
    if source != "boxed" and (force_number or prose) and (inner := _find_last_number(raw)):
        return _make(inner[0], source)
    return None if force_number or prose else e


def _statement_candidates(text: str) -> Iterator[tuple[str, tuple[str, int] | None]]:
    """Candidates in rule-priority order, computed lazily."""
    yield "boxed", _find_boxed(text)
    yield "gsm8k", _find_gsm8k(text)
    yield "answer_is", _find_statement(text, "answer_is")
    yield "final_answer", _find_statement(text, "final_answer")


def _extract_choice(text: str) -> Extracted | None:
    for source, found in _statement_candidates(text):
        if found and source != "gsm8k" and (letter := _choice_letter(_clean(found[0]))):
            return Extracted(raw=found[0].strip(), normalized=letter, value=None, source="choice")
    found = _find_choice_statement(text)
    if found is None and (parens := _PAREN_LETTER_RE.findall(text[-_WINDOW:])):
        found = (parens[-1], 0)
    if found is None and len(text.strip()) <= 4 and (letter := _choice_letter(_clean(text))):
        found = (letter, 0)
    return (
        Extracted(raw=found[0], normalized=found[0].upper(), value=None, source="choice") if found else None
    )


def _extract_number(text: str) -> Extracted | None:
    for source, found in _statement_candidates(text):
        if found and (e := _make_statement(found[0], source, force_number=True)):
            return e
    found = _find_last_number(text)
    return _make(found[0], "last_number") if found else None


def extract_answer(text: str, fmt: AnswerFormat = "auto") -> Extracted | None:
    """Extract the final answer from a model output; None means abstention.

    Only the text after the last ``</think>`` is searched when the output has one. ``auto`` tries, in
    order: last ``\\boxed{}``, GSM8K ``####``, "the answer is", "Final Answer", an explicit choice
    statement, then the last number. ``number``/``boxed``/``choice`` force that kind of answer;
    ``text`` returns the last answer statement (or the last line) as case-folded text.
    """
    if not text or not text.strip():
        return None
    text = text.rsplit("</think>", 1)[-1].replace("\u2212", "-")  # the answer follows the reasoning
    if fmt == "boxed":
        found = _find_boxed(text)
        return _make(found[0], "boxed") if found else None
    if fmt == "choice":
        return _extract_choice(text)
    if fmt == "number":
        return _extract_number(text)
    if fmt == "text":
        for source, found in _statement_candidates(text):
            if found:
                return _make_text(found[0], source)
        lines = text[-_WINDOW:].strip().rsplit("\n", 1)
        return _make_text(lines[-1], "text")
    for source, found in _statement_candidates(text):
        if found and (e := _make_statement(found[0], source, force_number=False)):
            return dataclasses.replace(e, source="choice") if _is_letter(e) and source != "boxed" else e
    if found := _find_choice_statement(text):
        return Extracted(raw=found[0], normalized=found[0], value=None, source="choice")
    found = _find_last_number(text)
    return _make(found[0], "last_number") if found else None


def last_reasoning_answer(reasoning: str) -> Extracted | None:
    """The last answer a reasoning trace arrives at, to compare with the final answer.

    The latest ``\\boxed{}`` or answer statement wins; failing those, the result of the last
    equation ("... = 17", source "equation"), then the last number.
    """
    text = reasoning.split("</think>", 1)[0] if "</think>" in reasoning else reasoning
    text = text.rsplit("<think>", 1)[-1].replace("\u2212", "-")
    if not text.strip():
        return None
    candidates: list[tuple[int, str, str]] = []
    if box := _find_boxed(text):
        candidates.append((box[1], box[0], "boxed"))
    if stmt := next(_statements(text), None):
        candidates.append((stmt[2], stmt[1], stmt[0]))
    for _, raw, source in sorted(candidates, reverse=True):
        if e := _make_statement(raw, source, force_number=False):
            return e
    if (last_eq := _last_match(_EQUATION_RE, text)) and (e := _make(last_eq.group(1), "equation")):
        return e
    found = _find_last_number(text)
    return _make(found[0], "last_number") if found else None


def extract_gold(text: str) -> Extracted | None:
    """A dataset's gold answer: GSM8K ``#### 42``, a MATH solution's last ``\\boxed{}``, or plain text."""
    if not text or not text.strip():
        return None
    if found := _find_gsm8k(text):
        return _make(found[0], "gsm8k")
    if found := _find_boxed(text):
        return _make(found[0], "boxed")
    return _make(text, "text")


def answer_key(e: Extracted) -> str:
    """Stable vote key: the canonical number (10 significant digits, "%" dropped) or the normalized text."""
    return _canon(e.value) if e.value is not None else e.normalized


def _scales(e: Extracted) -> tuple[float, ...]:
    assert e.value is not None
    # A percentage may be graded as written or as a fraction (Qwen2.5-Math accepts x100 and x0.01).
    return (e.value, e.value / 100) if e.normalized.endswith("%") else (e.value,)


# math-verify bounds each parse and comparison with signal.alarm, which works only on a main thread:
# elsewhere it raises at once (so every symbolic match came out False). Off the main thread the check
# runs on a helper process's main thread instead, and a process stuck in C code (huge powers) is killed.
_SYMBOLIC_TIMEOUT_S = 3
_SYMBOLIC_MAX_CHARS = 1000
# Two parses and one comparison, each bounded inside the helper, plus slack for a busy machine.
_SYMBOLIC_WAIT_S = 3 * _SYMBOLIC_TIMEOUT_S + 5


@functools.cache
def _math_verify() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    return parse, verify


def _verify_here(a: str, b: str) -> bool:
    """math-verify's equivalence check; call it only on a main thread (its timeouts use signals)."""
    mv = _math_verify()
    if mv is None:
        return False
    parse, verify = mv
    t = _SYMBOLIC_TIMEOUT_S
    try:
        return bool(
            verify(parse(f"${a}$", parsing_timeout=t), parse(f"${b}$", parsing_timeout=t), timeout_seconds=t)
        )
    except Exception:  # math-verify raises on unparsable input
        return False


def _serve_symbolic(conn: Any) -> None:
    """The helper process: answer (a, b) pairs from its main thread until the pipe closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which closes the pipe
    conn.send(_math_verify() is not None)
    while True:
        try:
            a, b = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(_verify_here(a, b))


class _SymbolicWorker:
    """One helper process for symbolic checks from any thread; calls take turns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: Any = None
        self._conn: Any = None

    def equal(self, a: str, b: str) -> bool:
        with self._lock:
            try:
                if (self._proc is None or not self._proc.is_alive()) and not self._start():
                    return False
                self._conn.send((a, b))
                if self._conn.poll(_SYMBOLIC_WAIT_S):
                    return bool(self._conn.recv())
            except (EOFError, OSError):
                pass
            self._stop()
            return False

    def _start(self) -> bool:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # fork is unsafe in a process with threads
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve_symbolic, args=(child,), name="edgereason-math-verify", daemon=True
        )
        self._proc.start()
        child.close()
        if self._conn.poll(120) and self._conn.recv():  # importing sympy takes seconds
            return True
        self._stop()
        return False

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
            self._conn.close()
        self._proc = self._conn = None


_symbolic_worker = functools.cache(_SymbolicWorker)


def _symbolic_equal(a: str, b: str) -> bool:
    if max(len(a), len(b)) > _SYMBOLIC_MAX_CHARS or _math_verify() is None:
        return False
    if threading.current_thread() is threading.main_thread():
        return _verify_here(a, b)
    return _symbolic_worker().equal(a, b)


def _as_extracted(x: Extracted | str) -> Extracted | None:
    return x if isinstance(x, Extracted) else _make(x, "text")


def answers_equal(a: Extracted | str, b: Extracted | str, rel_tol: float = 1e-4) -> bool:
    """Whether two answers agree: numerically within ``rel_tol``, textually, or symbolically.

    Strings are treated as bare answers (not whole outputs). A percentage on either side also
    matches its value divided by 100. Symbolic equivalence needs ``pip install 'edgereason[eval]'`` (math-verify).
    """
    ea, eb = _as_extracted(a), _as_extracted(b)
    if ea is None or eb is None:
        return False
    if ea.normalized == eb.normalized:
        return True
    if ea.value is not None and eb.value is not None:
        return any(
            math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-12) for x in _scales(ea) for y in _scales(eb)
        )
    return _symbolic_equal(ea.normalized, eb.normalized)
