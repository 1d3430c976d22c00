"""One strategy core, two executors: the same scripted outputs through the local scheduler and through the
remote executor (a scripted OpenAI-shaped server on loopback) make the same decisions and reports.

Locally a byte-scripted backend writes, for each sampler seed, what the scripted server writes for that
seed in a request (and, for LoRID, for that adapter as ``model``); both executors seed sample i with
``seed + i`` and LoRID's role r of iteration k with ``seed + 3k + r``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import edgereason as er
from edgereason.backends.base import SamplingParams
from edgereason.remote import load_remote

from .scripted import ByteScriptBackend, ScriptedSampler, script_sampler
from .scripted_server import Scripted, scripted_server
from .test_lorid import ROLES, TEMPLATE, LoridBackend

QUESTION = [{"role": "user", "content": "What is 3 + 4?"}]
# Self-consistency: sample seed s answers VOTES[s] (ESC windows of 4: [7, 8, 7, 7] splits, [7, 7, 7, 7] agrees).
VOTES = ["7", "8", "7", "7", "7", "7", "7", "7", "9", "9", "9", "9"]


def _vote_text(seed: int) -> str:
    return f"The answer is {VOTES[seed % len(VOTES)]}."


class VoteBackend(ByteScriptBackend):
    def __init__(self) -> None:
        super().__init__(max_sequences=6, chat_template=TEMPLATE)

    def make_sampler(self, params: SamplingParams) -> ScriptedSampler:
        return script_sampler(params.seed, _vote_text(params.seed))


@pytest.fixture(scope="module")
def vote_remote() -> Iterator[Any]:
    with (
        scripted_server(Scripted(text=lambda model, seed: _vote_text(seed), tokenize=True)) as s,
        load_remote(f"openai://127.0.0.1:{s.port}/m") as eng,
    ):
        yield eng


def _decisions(report: dict[str, Any]) -> dict[str, Any]:
    """What the vote decided, without the executors' own token counts and confidences."""
    keep = ("answer", "votes", "samples_used", "samples_requested", "stopped_early", "stop_rule", "strategy")
    samples = sorted((s["index"], s["answer"], s["finish_reason"]) for s in report["samples"])
    return {**{k: report[k] for k in keep}, "samples": samples}


@pytest.mark.parametrize(
    "sc",
    [
        {"samples": 5},  # fixed: 7 wins 4 to 1
        {"samples": 12, "adaptive": "esc", "window": 4, "parallel": 4},  # the 2nd window agrees: 8 used
        {"samples": 12, "adaptive": "esc", "window": 4, "parallel": 4, "strategy": "weighted"},
    ],
)
def test_self_consistency_decides_alike(vote_remote: Any, sc: dict[str, Any]) -> None:
    with er.Engine(VoteBackend()) as local:  # type: ignore[arg-type]
        want = local.chat(QUESTION, seed=0, max_tokens=32, self_consistency=sc)
    got = vote_remote.chat(QUESTION, seed=0, max_tokens=32, self_consistency=sc)
    a, b = want.extra["self_consistency"], got.extra["self_consistency"]
    if sc.get("strategy") == "weighted":  # votes are confidence sums: each executor's own log-probs
        a, b = {**a, "votes": sorted(a["votes"])}, {**b, "votes": sorted(b["votes"])}
    assert _decisions(b) == _decisions(a)
    assert (got.content, got.answer) == (want.content, want.answer) == ("The answer is 7.", "7")
    assert set(a) == set(b)  # one report shape (the remote one used to lack parallel)
    if "adaptive" in sc:
        assert a["samples_used"] == 8 and a["stop_rule"] == "esc" and a["stopped_early"]


# -- LoRID: the roles as adapters locally, as model=<adapter> remotely ----------------------------------------
LORID_CASES: list[dict[str, list[str]]] = [
    {"ir": ["The answer is 7"], "kg": ["fact: 3 + 4 = 7"], "dr": ["So the answer is 7"]},  # agree at once
    {"ir": ["5", "6", "9"], "kg": ["k"], "dr": ["8", "8", "6"]},  # DR's 6 meets IR's earlier 6
    {"ir": ["1", "2", "3", "4"], "kg": ["k"], "dr": ["5", "5", "6", "7"]},  # never: the majority, 5
]


def _role_text(answers: dict[str, list[str]], model: str, seed: int) -> str:
    k, r = divmod(seed, 3)
    assert model == ROLES[r], (model, seed)  # each role's request goes to its adapter
    script = answers[model]
    return script[min(k, len(script) - 1)]


@pytest.mark.parametrize("answers", LORID_CASES)
def test_lorid_decides_alike(answers: dict[str, list[str]]) -> None:
    lorid = {"max_iterations": 4}
    with er.Engine(LoridBackend(answers)) as local:  # type: ignore[arg-type]
        want = local.chat(QUESTION, seed=0, max_tokens=64, lorid=lorid)
    script = Scripted(text=lambda model, seed: _role_text(answers, model, seed), models=("m", *ROLES))
    with scripted_server(script) as s, load_remote(f"openai://127.0.0.1:{s.port}/m") as remote:
        got = remote.chat(QUESTION, seed=0, max_tokens=64, lorid=lorid)
    assert got.extra["lorid"] == want.extra["lorid"]
    assert (got.content, got.answer) == (want.content, want.answer)
    models = [b["model"] for p, b in s.calls if p.endswith("/chat/completions")]
    assert len(models) == 3 * want.extra["lorid"]["iterations"] and set(models) == set(ROLES)
