"""The evaluation protocol: settings are tuned on the ``dev`` split and the ``test`` split is run once, with
its configuration frozen into the run's identity, as is the code version.

``TUNED`` says, for each setting a sweep or a comparison chose, its value and on which split it was chosen;
the README cites it. A ``test`` run records ``frozen_config`` (every strategy's full generation options,
the tuned ones spelled out) and ``code_version`` (the package's .py files by content, plus ``git
describe`` for people); resuming a run under other code is refused unless asked for.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError
from ..options import GenerationOptions
from .specs import EvalSettings, StrategySpec, request_fields

PACKAGE_DIR = Path(__file__).resolve().parent.parent
TUNE_SPLIT, REPORT_SPLIT = "dev", "test"
# The generation options a sweep chose, frozen with every test run.
TUNED_OPTIONS = (
    "transition_markers",
    "early_exit_threshold",
    "early_exit_confidence",
    "early_exit_probe_tokens",
    "early_exit_max_probes",
    "early_exit_agree",
    "early_exit_answer",
    "auto_budget_cap",
)

# Where each tuned setting was chosen: the early-exit settings on the first 150 dev problems (student-cot,
# 2026-12-03, code 5e83fb2), one run per option set; the test split was run after, once. ``sweep``: the runs.
_DEV = "edgereason eval --model student-cot --split dev --limit 150"
TUNED: dict[str, dict[str, Any]] = {
    "budget:auto transition_markers": {
        "value": ["Wait", "Alternatively", "Hmm"],
        "chosen_on": "dev",
        "how": "DEER's markers against them plus paragraph breaks: budget:auto 34.0% vs 22.0%, "
        "budget:auto:trial 38.0% vs 2.7% (greedy 37.3%); breaks fall mid-computation",
        "sweep": f"{_DEV} --strategy budget:auto --strategy budget:auto:trial [--option "
        'transition_markers=\'["Wait","Alternatively","Hmm","\\n\\n"]\']',
    },
    "budget:auto early_exit_threshold": {
        "value": 0.95,
        "chosen_on": "dev",
        "how": "0.95 against 0.99: budget:auto:trial 38.0% vs 36.7% at 61.7 vs 64.8 reasoning tokens, "
        "budget:auto 34.0% vs 32.0%",
        "sweep": f"{_DEV} --strategy budget:auto --strategy budget:auto:trial [--option early_exit_threshold=0.99]",
    },
    "budget:auto:trial early_exit_answer": {
        "value": "trial",
        "chosen_on": "dev",
        "how": "'trial' against the model's own answer after the early </think> (DEER): 38.0% at 91.6 "
        "tokens vs 34.0% at 180.2",
        "sweep": f"{_DEV} --strategy budget:auto --strategy budget:auto:trial",
    },
    "budget:auto:K early_exit_agree": {
        "value": 1,
        "chosen_on": "dev",
        "how": "K=2 never exits with DEER's markers (the student writes 'Wait' once: 37.3% = greedy, no "
        "saving) and with paragraph breaks reaches 33.3% at 61.0 reasoning + 64.0 probe tokens; K=1 kept",
        "sweep": f"{_DEV} --strategy budget:auto:2 [--option transition_markers=...]",
    },
    "sc:adaptive parallel": {
        "value": 4,
        "chosen_on": "not swept",
        "how": "set by reasoning (an adaptive stop saves only samples not started), never compared",
        "sweep": None,
    },
}


def package_digest(root: Path = PACKAGE_DIR) -> str:
    """sha256 (16 hex digits) over the package's .py files: their paths and contents, in path order."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def git_describe(root: Path = PACKAGE_DIR) -> str | None:
    """``git describe --always --dirty`` of the checkout the package lives in (None outside one)."""
    if not (root.parent / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root.parent), "describe", "--always", "--dirty", "--tags"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def code_version(root: Path = PACKAGE_DIR) -> dict[str, Any]:
    """The code a run ran: the package version, ``git describe`` (None outside a checkout) and the hash
    of the package's .py files. Runs are the same code when their ``files`` agree: a commit that touches
    only the README changes ``git``, an uncommitted edit of the package changes ``files``."""
    from .. import __version__

    return {"version": __version__, "git": git_describe(root), "files": package_digest(root)}


def describe_code(code: Mapping[str, Any] | None) -> str:
    if not code:
        return "unrecorded"
    return f"{code.get('git') or 'edgereason ' + str(code.get('version'))} (files {code.get('files')})"


def check_same_code(old: Mapping[str, Any], new: Mapping[str, Any], out: Path, allow: bool) -> bool:
    """False when the run in ``out`` ran the same code; True when it differs and ``allow`` lets it mix.
    InvalidRequestError otherwise, naming both versions."""
    before, now = old.get("code"), new.get("code")
    if now is None or (before is not None and before.get("files") == now.get("files")):
        return False  # the same code (or a caller that does not record code versions)
    if allow:
        return True
    raise InvalidRequestError(
        f"{out} was run by other code ({describe_code(before)}; now {describe_code(now)}): resuming would mix "
        "results of two code versions. Use another --out, or --allow-code-change to mix them knowingly "
        "(the run records each version)",
        param="resume",
    )


def frozen_config(specs: Sequence[StrategySpec], settings: EvalSettings) -> dict[str, Any]:
    """Each strategy's generation options as the test run uses them: the tuned ones by name and a digest
    of all of them (seeds left out: they vary per item by design)."""
    out: dict[str, Any] = {}
    for spec in specs:
        opts = GenerationOptions.build(None, request_fields(spec, settings, 0))
        every = opts.model_dump(mode="json", exclude={"seed"})
        digest = hashlib.sha256(json.dumps(every, sort_keys=True).encode()).hexdigest()[:16]
        tuned = {k: every[k] for k in TUNED_OPTIONS} if spec.budget == "auto" else {}
        out[spec.label] = {"options": digest, **({"tuned": tuned} if tuned else {})}
    return out


def protocol_note(split: str | None) -> str | None:
    """What to tell the user about the split this run uses (None: nothing to say)."""
    if split == REPORT_SPLIT:
        return (
            "test split: its configuration and code version are frozen into the run; tune and compare "
            "settings on --split dev, then run test once"
        )
    if split == "train":
        return "train split: the student was trained on these problems; use dev to tune, test to report"
    return None
