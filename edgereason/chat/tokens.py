"""Turning a rendered prompt into tokens safely.

Two guards sit between request text and the model:
- Control-token injection: the template's own special tokens (``<|im_start|>``) must become special
  tokens, but the same strings written inside a message are ordinary text. Message contents that
  contain control text are tokenized without special-token parsing, the template's text around them
  with it.
- Oversized prompts: a prompt far over the context is refused after tokenizing a prefix of it that
  already exceeds the context, not the whole text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..errors import ContextOverflowError, InvalidRequestError

# A first look at this many characters per context token; doubled until the text is used up or
# the tokens exceed the context. Tokens rarely cover more than a few characters each.
CHARS_PER_TOKEN_PROBE = 8


class Tokenizer(Protocol):
    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]: ...


def has_control_text(tok: Tokenizer, text: str) -> bool:
    """Whether ``text`` holds a string that tokenizes to a special (control) token."""
    return tok.tokenize(text, special=True) != tok.tokenize(text, special=False)


def literal_spans(rendered: str, contents: Sequence[str]) -> list[tuple[int, int]]:
    """Where each content appears in ``rendered``, searched in order (templates keep message order).

    Raises InvalidRequestError for a content the template changed (trimmed, split): then its control
    text cannot be told apart from the template's, and the request is refused rather than guessed.
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    for content in contents:
        at = rendered.find(content, cursor)
        if at < 0:
            raise InvalidRequestError(
                "a message contains the model's control-token text (such as <|im_start|>) in a form the "
                "chat template rewrites; remove the control-token text from the message",
                param="messages",
            )
        spans.append((at, at + len(content)))
        cursor = at + len(content)
    return spans


def tokenize_prompt(
    tok: Tokenizer,
    text: str,
    *,
    n_ctx: int,
    add_bos: bool = False,
    literals: Sequence[str] = (),
) -> list[int]:
    """Tokens of a rendered prompt; ``literals`` are message contents that hold control-token text.

    Raises ContextOverflowError as soon as the prompt is known to need ``n_ctx`` tokens or more.
    """
    spans = literal_spans(text, literals) if literals else []
    if len(text) > CHARS_PER_TOKEN_PROBE * n_ctx:
        _refuse_if_far_over(tok, text, n_ctx=n_ctx, add_bos=add_bos)
    tokens: list[int] = []
    pos = 0
    for start, end in spans:
        tokens += tok.tokenize(text[pos:start], add_bos=add_bos and not tokens, special=True)
        tokens += tok.tokenize(text[start:end], add_bos=add_bos and not tokens, special=False)
        pos = end
    tokens += tok.tokenize(text[pos:], add_bos=add_bos and not tokens, special=True)
    if len(tokens) >= n_ctx:
        raise ContextOverflowError(len(tokens), n_ctx)
    return tokens


def _refuse_if_far_over(tok: Tokenizer, text: str, *, n_ctx: int, add_bos: bool) -> None:
    """Tokenize growing prefixes of a long text; refuse once a prefix alone exceeds the context."""
    size = CHARS_PER_TOKEN_PROBE * n_ctx
    while size < len(text):
        # A prefix has at most one token fewer than the same text inside the whole (the cut may split one).
        n = len(tok.tokenize(text[:size], add_bos=add_bos, special=True)) - 1
        if n >= n_ctx:
            raise ContextOverflowError(n, n_ctx, at_least=True)
        size *= 2
