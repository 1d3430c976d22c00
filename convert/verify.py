"""``--verify``: does the converted artefact compute what the source checkpoint computes?

transformers (float32, eval) on the checkpoint that was converted is the reference; the artefact runs in
its own runtime: llama.cpp for GGUF, mlx-lm's model for MLX, onnxruntime (all-position logits) and
onnxruntime-genai (greedy decoding) for ONNX. Both sides see the same token ids: a chat-formatted prompt
of at least ``MIN_POSITIONS`` tokens. Thresholds follow the precision class of the export:

- float32 exports: max |logit diff| <= 1e-3 over the first 32 positions, identical 32-token greedy run;
- 8-bit exports: top-1 agreement >= 0.99 over all positions;
- everything else (f16, bf16, k-quants, 4-bit): top-1 agreement and KL divergence are reported only.

When the source was a GGUF file, the greedy run of that GGUF in llama.cpp is compared too (reported).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgereason.errors import ModelLoadError

from .parity import _hf_logits_and_greedy, _llama_cpp_logits_and_greedy

if TYPE_CHECKING:
    from numpy.typing import NDArray

logger = logging.getLogger(__name__)

MIN_POSITIONS = 256
EXACT_POSITIONS = 32
GREEDY_TOKENS = 32
EXACT_TOLERANCE = 1e-3
MIN_8BIT_TOP1 = 0.99
EXACT_QUANTS = frozenset({"f32", "fp32"})
EIGHT_BIT_QUANTS = frozenset({"q8_0", "8", "int8"})

PASSAGE = (
    "The lighthouse keeper kept a careful log. Every evening he wrote down the wind, the height of the "
    "waves, the ships that passed and the hour the lamp was lit. On Monday three fishing boats came back "
    "before dark and one cargo ship passed far out at sea. On Tuesday the fog was so thick that he rang "
    "the bell every two minutes from six in the evening until past midnight, and no ship passed at all. "
    "On Wednesday a sailing yacht anchored in the bay; its crew of four rowed ashore to buy bread, eggs "
    "and a sack of apples from the village. On Thursday the supply boat brought forty litres of lamp oil, "
    "a new wick, letters from his sister and a crate of tinned fish. On Friday a storm broke the glass of "
    "the lower window and he spent the morning repairing it with a board and six nails. On Saturday the "
    "sea was calm again, seven boats went out to fish and all of them returned with full nets before the "
    "sun went down. On Sunday he rested, read his letters twice and counted the oil that was left."
)
QUESTION = "How many boats and ships are mentioned in the log in total? Think step by step, then answer."


def verification_ids(hf_dir: Path) -> list[int]:
    """Token ids of a fixed chat prompt (>= ``MIN_POSITIONS`` tokens) rendered with the checkpoint's template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    passage = PASSAGE
    while True:
        messages = [{"role": "user", "content": f"{passage}\n\n{QUESTION}"}]
        if tokenizer.chat_template:
            ids = tokenizer.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=True, return_dict=False
            )
        else:
            ids = tokenizer(messages[0]["content"])["input_ids"]
        if len(ids) >= MIN_POSITIONS:
            return [int(i) for i in ids]  # type: ignore[arg-type]
        passage = f"{passage} {PASSAGE}"


def compare_logits(
    ref: NDArray[np.float32], ref_greedy: list[int], got: NDArray[np.float32], got_greedy: list[int]
) -> dict[str, Any]:
    """Agreement numbers between reference and artefact logits (positions x vocab) and greedy runs."""
    if ref.shape != got.shape:
        raise ModelLoadError(
            f"logit shapes differ: reference {ref.shape}, artefact {got.shape}; not the same model"
        )
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    diff = np.abs(ref64 - got64)
    log_p = ref64 - _logsumexp(ref64)
    log_q = got64 - _logsumexp(got64)
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
    return {
        "n_positions": int(ref.shape[0]),
        "max_abs_diff_first_32": float(diff[:EXACT_POSITIONS].max()),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_logit": float(np.abs(ref64).max()),
        "top1_agreement": float(np.mean(ref.argmax(axis=-1) == got.argmax(axis=-1))),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "greedy_tokens": len(ref_greedy),
        "greedy_match": ref_greedy == got_greedy,
        "greedy_common_prefix": common_prefix(ref_greedy, got_greedy),
        "greedy_reference": ref_greedy,
        "greedy_artefact": got_greedy,
    }


def _logsumexp(x: NDArray[np.float64]) -> NDArray[np.float64]:
    peak = x.max(axis=-1, keepdims=True)
    out: NDArray[np.float64] = peak + np.log(np.exp(x - peak).sum(axis=-1, keepdims=True))
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    """Number of leading tokens two runs share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def checks_for(quant: str, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The pass/fail checks that apply to an export at ``quant`` (none for 4-bit, f16, k-quants)."""
    if quant in EXACT_QUANTS:
        return [
            _check("max_abs_diff_first_32", report["max_abs_diff_first_32"], "<=", EXACT_TOLERANCE),
            _check("greedy_match", report["greedy_match"], "==", True),
        ]
    if quant in EIGHT_BIT_QUANTS:
        return [_check("top1_agreement", report["top1_agreement"], ">=", MIN_8BIT_TOP1)]
    return []


def _check(name: str, value: Any, op: str, threshold: Any) -> dict[str, Any]:
    ok = value <= threshold if op == "<=" else value >= threshold if op == ">=" else value == threshold
    return {"name": name, "value": value, "op": op, "threshold": threshold, "ok": bool(ok)}


def artefact_logits(
    target: str, artifact: Path, ids: list[int], *, adapter: Path | None = None, threads: int = 1
) -> tuple[NDArray[np.float32], list[int]]:
    """All-position logits and a greedy run of ``GREEDY_TOKENS`` from the artefact in its own runtime."""
    if target == "gguf":
        return _llama_cpp_logits_and_greedy(artifact, ids, GREEDY_TOKENS, threads, adapter)
    if target == "mlx":
        from .mlx_export import mlx_logits_and_greedy

        return mlx_logits_and_greedy(artifact, ids, GREEDY_TOKENS, adapter=adapter)
    from .onnx_export import onnx_logits_and_greedy

    return onnx_logits_and_greedy(artifact, ids, GREEDY_TOKENS)


def verify_artifact(
    target: str,
    artifact: Path,
    hf_dir: Path,
    quant: str,
    *,
    peft_dir: Path | None = None,
    target_adapter: Path | None = None,
    source_gguf: Path | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Parity report of ``artifact`` against transformers on ``hf_dir`` (plus ``peft_dir`` if given).

    ``target_adapter`` is the artefact-side form of ``peft_dir`` (an adapter GGUF or mlx-lm folder).
    The report holds the numbers of ``compare_logits``, the ``checks`` that apply and ``passed``.
    """
    ids = verification_ids(hf_dir)
    ref, ref_greedy = _hf_logits_and_greedy(hf_dir, ids, GREEDY_TOKENS, peft_dir)
    got, got_greedy = artefact_logits(target, artifact, ids, adapter=target_adapter, threads=threads)
    report = compare_logits(ref, ref_greedy, got, got_greedy)
    if source_gguf is not None:
        _, gguf_greedy = _llama_cpp_logits_and_greedy(source_gguf, ids, GREEDY_TOKENS, threads, None)
        report["source_gguf_greedy"] = gguf_greedy
        report["source_gguf_greedy_common_prefix"] = common_prefix(gguf_greedy, got_greedy)
    report["checks"] = checks_for(quant, report)
    report["passed"] = all(c["ok"] for c in report["checks"])
    logger.info(
        "verify %s %s: max |diff| %.3g (first 32: %.3g), top-1 %.4f over %d positions, KL %.3g, "
        "greedy %d/%d%s",
        target,
        quant,
        report["max_abs_diff"],
        report["max_abs_diff_first_32"],
        report["top1_agreement"],
        report["n_positions"],
        report["kl_mean"],
        report["greedy_common_prefix"],
        report["greedy_tokens"],
        "" if report["passed"] else " FAILED",
    )
    return report
