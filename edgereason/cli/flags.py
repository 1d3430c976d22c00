"""The flags run, chat, eval, bench and app share, and the ``EDGEREASON_*`` variables behind them.

Each model and generation flag also reads ``EDGEREASON_<FLAG>`` (``--n-ctx``: ``EDGEREASON_N_CTX``), the
names ``edgereason serve`` reads through its settings schema. A flag on the command line wins over the
variable, the variable over the default. The variable's text is parsed as the flag's own text would be,
so the two cannot disagree on types or choices.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import EdgeReasonError
from ..loading import BACKENDS

ENV_PREFIX = "EDGEREASON_"
KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
# Defaults of the flags whose default is not None: the parsers keep None so an unset flag can be told
# from a given one, and apply_env fills these in.
_DEFAULTS: dict[str, Any] = {"backend": "auto", "cache_type_k": "f16", "cache_type_v": "f16"}
_ENV_ACTIONS = "_env_actions"  # parser default: the actions whose unset value comes from the environment


def env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


def _thinking(value: str) -> bool | str:
    table: dict[str, bool | str] = {"on": True, "true": True, "off": False, "false": False, "auto": "auto"}
    if value.lower() not in table:
        raise argparse.ArgumentTypeError(f"invalid choice {value!r} (use on, off or auto)")
    return table[value.lower()]


def _budget(value: str) -> int | str:
    if value.lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid budget {value!r} (use a token count or auto)") from None


def _env_flag(p: argparse.ArgumentParser, *flags: str, help: str | None = None, **kw: Any) -> None:
    """An option whose unset value comes from EDGEREASON_<DEST>, then from _DEFAULTS."""
    action = p.add_argument(*flags, default=None, **kw)
    default = _DEFAULTS.get(action.dest)
    note = f"env {env_name(action.dest)}" + (f"; default {default}" if default is not None else "")
    action.help = f"{help} [{note}]" if help else f"[{note}]"
    p.set_defaults(**{_ENV_ACTIONS: [*(p.get_default(_ENV_ACTIONS) or []), action]})


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """How to load the model, in llama.cpp's spellings beside ours."""
    _env_flag(
        p,
        "--model",
        "-m",
        help="GGUF path, MLX or ONNX folder, openai://HOST:PORT/MODEL, 'default' (embedded SmolLM2), "
        "'student', a Hugging Face org/repo[:QUANT] in the HF cache, an Ollama name, or a name in "
        "$EDGEREASON_MODELS_DIR",
    )
    _env_flag(
        p,
        "--backend",
        choices=BACKENDS,
        help="runtime; auto picks by artefact (.gguf, MLX folder, ONNX genai folder, openai://)",
    )
    _env_flag(
        p,
        "--n-ctx",
        "-c",
        "--ctx-size",
        dest="n_ctx",
        type=int,
        help="context tokens per sequence (memory = n_ctx x sequences; llama-server's -c is the total)",
    )
    _env_flag(p, "--threads", "-t", type=int, help="CPU threads (default: all cores)")
    _env_flag(
        p,
        "--parallel",
        "-np",
        "--max-sequences",
        dest="max_sequences",
        type=int,
        help="sequence slots decoded together (default 8)",
    )
    _env_flag(p, "--cache-type-k", choices=KV_CACHE_TYPES, help="KV cache type of K")
    _env_flag(
        p, "--cache-type-v", choices=KV_CACHE_TYPES, help="KV cache type of V (quantised: flash attention)"
    )
    _env_flag(p, "--chat-template", help="a jinja chat template file to use instead of the model's")
    _env_flag(p, "--reasoning-format", choices=["deepseek-r1", "qwen3", "none"], help="override detection")


def add_adapter_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--adapter",
        action="append",
        default=None,
        metavar="NAME=PATH[:SCALE]",
        help="load a LoRA adapter: a llama.cpp LoRA GGUF or a PEFT folder, converted on first use (repeatable); select it with --use-adapter NAME",
    )


def add_tool_flags(p: argparse.ArgumentParser) -> None:
    """The built-in Python tool: the engine runs the model's code blocks (README "Built-in Python tool")."""
    p.add_argument(
        "--tool",
        dest="builtin_tools",
        action="append",
        choices=["python"],
        default=None,
        help="a built-in tool the engine runs when the model writes for it: python (code blocks run in a "
        "sandbox, their output is injected)",
    )
    _env_flag(p, "--max-tool-calls", type=int, help="code blocks run per choice (default 8)")
    p.add_argument(
        "--unsafe-python-tool",
        action="store_true",
        help="run the Python tool with resource limits only where the sandbox's namespaces are unavailable",
    )


def add_function_tool_flags(p: argparse.ArgumentParser) -> None:
    """OpenAI function tools: the model may call them; the calls are printed (run) or answered by you (chat)."""
    p.add_argument(
        "--tools",
        type=Path,
        metavar="FILE",
        help='a JSON file with OpenAI function tools ([{"type": "function", "function": {...}}, ...])',
    )
    p.add_argument(
        "--tool-choice",
        metavar="auto|required|none|NAME",
        help="whether the model must call a tool (required), may (auto, the default with --tools), must "
        "not (none), or must call the function NAME",
    )


def add_generation_flags(p: argparse.ArgumentParser) -> None:
    """Flags that map one-to-one onto GenerationOptions fields (unset flags keep the defaults)."""
    _env_flag(p, "--max-tokens", type=int, help="cap on generated tokens")
    _env_flag(p, "--temp", "--temperature", dest="temperature", type=float, help="0 = greedy")
    _env_flag(p, "--top-p", type=float)
    _env_flag(p, "--top-k", type=int)
    _env_flag(p, "--min-p", type=float)
    _env_flag(p, "--repeat-penalty", type=float)
    _env_flag(p, "--presence-penalty", type=float)
    _env_flag(p, "--frequency-penalty", type=float)
    _env_flag(p, "--seed", type=int)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    _env_flag(p, "--thinking", type=_thinking, help="on | off | auto: force thinking open or skip it")
    _env_flag(p, "--thinking-budget", type=_budget, metavar="N|auto", help="token cap")
    _env_flag(p, "--min-thinking", type=int, help="reasoning tokens the model must write")
    _env_flag(p, "--reasoning-effort", choices=["none", "low", "medium", "high"])
    _env_flag(p, "--early-exit-threshold", type=float, help="auto: exit confidence")
    _env_flag(p, "--use-adapter", metavar="NAME", help="generate with this loaded LoRA adapter")


def apply_env(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> None:
    """Fill each shared flag the command line left unset from EDGEREASON_<DEST>, else its default.

    A bad value is one EdgeReasonError naming the variable (the CLI prints it and exits 2).
    """
    env = os.environ if environ is None else environ
    for action in vars(args).pop(_ENV_ACTIONS, ()):
        if getattr(args, action.dest, None) is not None:
            continue
        name = env_name(action.dest)
        text = env.get(name, "").strip()
        setattr(args, action.dest, _parse(action, name, text) if text else _DEFAULTS.get(action.dest))


def _parse(action: argparse.Action, name: str, text: str) -> Any:
    try:
        value = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        kind = getattr(action.type, "__name__", "value").lstrip("_")
        detail = str(exc) if isinstance(exc, argparse.ArgumentTypeError) else f"not a valid {kind}"
        raise EdgeReasonError(f"{name}={text!r}: {detail}") from None
    if action.choices is not None and value not in action.choices:
        raise EdgeReasonError(f"{name}={text!r}: use one of {', '.join(map(str, action.choices))}")
    return value
