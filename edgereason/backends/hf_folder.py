"""What the MLX and ONNX backends share: a Hugging Face-style folder's tokenizer, metadata and sampler.

Both formats keep the checkpoint's ``tokenizer.json`` beside the weights; reading it with the
``tokenizers`` library (not each runtime's own tokenizer) gives every backend the same token ids and
the same bytes per token as llama.cpp, which the cross-backend tests check.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingExtraError, ModelLoadError
from .base import SamplingParams, TopLogprobs

log = logging.getLogger(__name__)

# End-of-turn tokens of the chat templates in use; llama.cpp treats the same texts as end of generation.
END_OF_TURN_TEXTS = frozenset(
    {
        "<|endoftext|>",
        "<|im_end|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|end|>",
        "<end_of_turn>",
        "<|end_of_text|>",
        "<｜end▁of▁sentence｜>",
        "<|return|>",
        "<EOT>",
    }
)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: printable stand-in character -> byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


def _ids(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [int(v) for v in value if isinstance(v, int)]
    return []


def read_chat_template(folder: Path) -> str | None:
    """The chat template: ``chat_template.jinja`` (transformers >= 4.43) or tokenizer_config.json."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tpl = read_json(folder / "tokenizer_config.json").get("chat_template")
    if isinstance(tpl, list):  # named templates: take "default"
        tpl = next(
            (t.get("template") for t in tpl if isinstance(t, dict) and t.get("name") == "default"), None
        )
    return tpl if isinstance(tpl, str) else None


class FolderTokenizer:
    """The folder's ``tokenizer.json`` with llama.cpp's conventions for bytes, BOS and end of generation."""

    def __init__(self, folder: Path, eos_ids: Iterable[int] = (), *, extra: str) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise MissingExtraError("reading the model's tokenizer.json", extra) from exc
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"{folder} has no tokenizer.json; convert the model with edgereason.convert")
        self._tok = Tokenizer.from_file(str(path))
        spec = read_json(path)
        cfg = read_json(folder / "tokenizer_config.json")
        self.n_vocab = int(self._tok.get_vocab_size(with_added_tokens=True))
        self._byte_level = "ByteLevel" in json.dumps(spec.get("decoder") or {})
        added = spec.get("added_tokens") or []
        self._special = {int(t["id"]) for t in added if t.get("special")}
        self._added = {int(t["id"]): str(t["content"]) for t in added}
        self.bos_token = _token_text(cfg.get("bos_token"))
        self.eos_token = _token_text(cfg.get("eos_token"))
        self.bos_id = self._tok.token_to_id(self.bos_token) if self.bos_token else None
        self.add_bos = bool(cfg.get("add_bos_token", _post_processor_adds_bos(spec)))
        eog = set(eos_ids)
        eos_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        if eos_id is not None:
            eog.add(int(eos_id))
        eog |= {i for i, text in self._added.items() if text in END_OF_TURN_TEXTS}
        self.eog_ids = frozenset(eog)
        self._bytes: dict[int, bytes] = {}
        self._literal: Any = None  # a copy that tokenizes special-token text as text (built on first use)
        self._literal_lock = threading.Lock()

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]:
        if special:
            ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        else:  # special-token text as ordinary text (tokenizers >= 0.15), on a copy: no shared toggle
            ids = list(self._literal_tokenizer().encode(text, add_special_tokens=False).ids)
        if add_bos and self.bos_id is not None:
            ids.insert(0, int(self.bos_id))
        return ids

    def _literal_tokenizer(self) -> Any:
        with self._literal_lock:
            if self._literal is None:
                from tokenizers import Tokenizer

                self._literal = Tokenizer.from_str(self._tok.to_str())
                self._literal.encode_special_tokens = True
            return self._literal

    def token_bytes(self, token: int) -> bytes:
        piece = self._bytes.get(token)
        if piece is None:
            piece = self._piece(token)
            self._bytes[token] = piece
        return piece

    def special_piece(self, token: int) -> bytes:
        """Control tokens written out (``<|im_end|>``); other tokens as ``token_bytes``."""
        if token in self._special:
            return (self._tok.id_to_token(token) or "").encode("utf-8")
        return self.token_bytes(token)

    def _piece(self, token: int) -> bytes:
        if token in self._special:  # control tokens contribute no text, as in llama.cpp
            return b""
        if token in self._added:
            return self._added[token].encode("utf-8")
        text = self._tok.id_to_token(token)
        if text is None:
            return b""
        if self._byte_level:
            table = _byte_decoder()
            return bytes(table[c] for c in text if c in table)
        if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):  # SentencePiece byte fallback
            return bytes([int(text[3:5], 16)])
        return text.replace("▁", " ").encode("utf-8")

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return token in self.eog_ids

    def is_single_token(self, text: str) -> bool:
        return len(self.tokenize(text)) == 1


def _post_processor_adds_bos(spec: dict[str, Any]) -> bool:
    """Whether tokenizer.json's post-processor puts a special token before the text (Llama-style BOS)."""
    post = spec.get("post_processor") or {}
    steps = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for step in steps:
        single = step.get("single") if isinstance(step, dict) else None
        if isinstance(single, list) and single and "SpecialToken" in single[0]:
            return True
    return False


def eos_ids_of(*configs: dict[str, Any]) -> list[int]:
    """``eos_token_id`` (an int or a list) from config.json / generation_config.json / genai_config.json."""
    out: list[int] = []
    for cfg in configs:
        out += _ids(cfg.get("eos_token_id"))
    return out


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


class NumpySampler:
    """One sequence's sampler on a logits row, in llama.cpp's chain order.

    Logit biases, penalties over the last ``repeat_last_n`` sampled tokens, then greedy at temperature 0, else
    top-k, top-p, min-p, temperature and a seeded draw.
    """

    def __init__(self, params: SamplingParams) -> None:
        self.p = params
        self._rng = np.random.default_rng(params.seed & 0xFFFFFFFF)
        self._recent: deque[int] = deque(maxlen=max(params.repeat_last_n, 0) or None)
        self._penalise = params.repeat_penalty != 1.0 or bool(
            params.presence_penalty or params.frequency_penalty
        )

    def sample(self, row: np.ndarray) -> int:
        logits = row.astype(np.float64, copy=True)
        for token, bias in self.p.logit_bias:
            logits[token] += bias
        if self._penalise and self._recent:
            self._apply_penalties(logits)
        token = self._greedy(logits) if self.p.temperature <= 0.0 else self._draw(logits)
        if self._recent.maxlen != 0:
            self._recent.append(token)
        return token

    def _apply_penalties(self, logits: np.ndarray) -> None:
        ids, counts = np.unique(np.fromiter(self._recent, dtype=np.int64), return_counts=True)
        vals = logits[ids]
        if self.p.repeat_penalty != 1.0:
            vals = np.where(vals <= 0, vals * self.p.repeat_penalty, vals / self.p.repeat_penalty)
        vals -= counts * self.p.frequency_penalty + self.p.presence_penalty
        logits[ids] = vals

    @staticmethod
    def _greedy(logits: np.ndarray) -> int:
        return int(np.argmax(logits))

    def _draw(self, logits: np.ndarray) -> int:
        p = self.p
        ids = np.arange(logits.shape[0])
        if 0 < p.top_k < logits.shape[0]:
            keep = np.argpartition(-logits, p.top_k)[: p.top_k]
            ids, logits = ids[keep], logits[keep]
        order = np.argsort(-logits, kind="stable")
        ids, logits = ids[order], logits[order]
        if p.top_p < 1.0:
            probs = _softmax(logits)
            cut = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1
            ids, logits = ids[:cut], logits[:cut]
        if p.min_p > 0.0:
            probs = _softmax(logits)
            keep_mask = probs >= p.min_p * probs[0]
            ids, logits = ids[keep_mask], logits[keep_mask]
        probs = _softmax(logits / p.temperature)
        return int(ids[int(self._rng.choice(len(ids), p=probs))])

    def close(self) -> None:
        self._recent.clear()


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def top_logprobs_of(row: np.ndarray, token: int, k: int) -> TopLogprobs:
    """Log-probabilities (temperature 1) of ``token`` and the ``k`` most likely tokens of a logits row."""
    row = row.astype(np.float64)
    mx = row.max()
    lse = mx + np.log(np.exp(row - mx).sum())
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        k = min(k, row.shape[0] - 1)
        idx = np.argpartition(-row, k)[:k]
        idx = idx[np.argsort(-row[idx], kind="stable")]
        top = tuple((int(i), float(row[i] - lse)) for i in idx)
    return TopLogprobs(token=token, logprob=float(row[token] - lse), top=top)


class FolderBackendMixin:
    """What the MLX and ONNX backends share: tokenising through the folder's ``tokenizer.json`` and
    sampling with :class:`NumpySampler` from the logits rows of the last decode call (``_rows``)."""

    tokenizer: FolderTokenizer
    _rows: list[np.ndarray]

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]:
        return self.tokenizer.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.detokenize(tokens)

    def token_bytes(self, token: int) -> bytes:
        return self.tokenizer.token_bytes(token)

    def special_piece(self, token: int) -> bytes:
        return self.tokenizer.special_piece(token)

    def is_eog(self, token: int) -> bool:
        return self.tokenizer.is_eog(token)

    def make_sampler(self, params: SamplingParams) -> NumpySampler:
        return NumpySampler(params)

    def sample(self, sampler: Any, logits: int) -> int:
        return int(sampler.sample(self._rows[logits]))

    def top_logprobs(self, logits: int, token: int, k: int) -> TopLogprobs:
        return top_logprobs_of(self._rows[logits], token, k)
