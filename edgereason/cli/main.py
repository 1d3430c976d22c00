"""The ``edgereason`` command: thin wrappers over the Python API."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .. import __version__
from ..errors import EdgeReasonError, MissingExtraError
from .flags import (
    add_adapter_flags,
    add_function_tool_flags,
    add_generation_flags,
    add_model_flags,
    add_tool_flags,
    apply_env,
)

if TYPE_CHECKING:
    from ..loading import EngineSpec
    from ..surface import ChatEngine

log = logging.getLogger("edgereason")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


_GEN_FIELDS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "thinking",
    "thinking_budget",
    "min_thinking",
    "reasoning_effort",
    "early_exit_threshold",
    "builtin_tools",
    "max_tool_calls",
)


def generation_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {k: getattr(args, k) for k in _GEN_FIELDS if getattr(args, k, None) is not None}
    fields.update(_function_tools(args))
    name = getattr(args, "use_adapter", None)
    if name is not None:
        scales = {spec.name: spec.scale for spec in _adapter_specs(args)}
        fields["adapters"] = [{"name": name, "scale": scales.get(name, 1.0)}]
    return fields


def _function_tools(args: argparse.Namespace) -> dict[str, Any]:
    """``tools``/``tool_choice`` request fields from --tools FILE and --tool-choice (checked by the engine)."""
    out: dict[str, Any] = {}
    path, choice = getattr(args, "tools", None), getattr(args, "tool_choice", None)
    if path is not None:
        try:
            out["tools"] = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise EdgeReasonError(f"cannot read --tools {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise EdgeReasonError(f"--tools {path} is not JSON: {exc}") from None
    if choice is not None:
        if path is None and choice != "none":
            raise EdgeReasonError("--tool-choice needs --tools FILE")
        named = {"type": "function", "function": {"name": choice}}
        out["tool_choice"] = choice if choice in ("auto", "required", "none") else named
    return out


def _adapter_specs(args: argparse.Namespace) -> list[Any]:
    from ..adapters import parse_adapter_spec

    # Only run/chat's NAME=PATH[:SCALE] strings; other commands (the app) load their adapters themselves.
    return [
        parse_adapter_spec(text) for text in getattr(args, "adapter", None) or () if isinstance(text, str)
    ]


def engine_spec(args: argparse.Namespace, **overrides: Any) -> EngineSpec:
    """The engine the model flags describe (``add_model_flags``; run/chat's ``--adapter`` specs)."""
    from ..loading import EngineSpec

    spec = EngineSpec(
        model=args.model,
        backend=args.backend,
        n_ctx=args.n_ctx,
        threads=args.threads,
        max_sequences=args.max_sequences,
        cache_type_k=args.cache_type_k,
        cache_type_v=args.cache_type_v,
        chat_template_file=args.chat_template,
        reasoning_format=args.reasoning_format,
        adapters={spec.name: spec.path for spec in _adapter_specs(args)},
        unsafe_python_tool=bool(getattr(args, "unsafe_python_tool", False)),
    )
    return dataclasses.replace(spec, **overrides)


def load_engine(args: argparse.Namespace) -> ChatEngine:
    from ..loading import load_engine as load

    return load(engine_spec(args))


def _messages(args: argparse.Namespace, prompt: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": args.system}] if args.system else []
    return [*msgs, {"role": "user", "content": prompt}]


class _Dim:
    """Reasoning goes to stderr, dimmed when it is a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.open = False

    def write(self, text: str) -> None:
        if self.tty and not self.open:
            sys.stderr.write("\x1b[2m")
            self.open = True
        sys.stderr.write(text)
        sys.stderr.flush()

    def close(self) -> None:
        if self.open:
            sys.stderr.write("\x1b[0m\n")
            self.open = False
        elif not self.tty:
            sys.stderr.write("\n")


def stream_to_terminal(stream: Any) -> Any:
    """Reasoning dimmed on stderr, the answer on stdout; a tool call as one JSON line (OpenAI's shape)."""
    dim = _Dim()
    wrote_reasoning = False
    for chunk in stream:
        call = getattr(chunk, "call", None)
        if call is not None:
            sys.stdout.write(json.dumps(call.to_dict(), ensure_ascii=False) + "\n")
            sys.stdout.flush()
            continue
        if chunk.channel == "reasoning":
            dim.write(chunk.text)
            wrote_reasoning = True
        else:
            if wrote_reasoning:
                dim.close()
                wrote_reasoning = False
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    if wrote_reasoning:
        dim.close()
    sys.stdout.write("\n")
    return stream.result


def format_vote_table(report: dict[str, Any]) -> str:
    """The self-consistency report as a small table: one row per answer, then a summary line."""
    votes: dict[str, float] = report["votes"]
    total = sum(votes.values()) or 1
    width = max([len("ANSWER"), *(len(a) for a in votes)])
    lines = [f"{'ANSWER':<{width}}  VOTES  SHARE"]
    for answer, count in sorted(votes.items(), key=lambda kv: -kv[1]):
        mark = "  <- voted" if answer == report["answer"] else ""
        lines.append(f"{answer:<{width}}  {count:>5g}  {count / total:>5.0%}{mark}")
    abstained = sum(1 for s in report["samples"] if s["answer"] is None)
    lines.append(
        f"{report['samples_used']}/{report['samples_requested']} samples"
        + (f", {abstained} abstained" if abstained else "")
        + (f", stopped early ({report['stop_rule']})" if report["stopped_early"] else "")
    )
    return "\n".join(lines)


def _run_votes(
    args: argparse.Namespace, engine: Any, messages: list[dict[str, str]], fields: dict[str, Any]
) -> int:
    fields["self_consistency"] = {"samples": args.votes, "adaptive": args.adaptive or False}
    res = engine.chat(messages, **fields)
    if args.json:
        print(json.dumps(res.to_dict(), ensure_ascii=False))
        return 0
    sys.stderr.write(format_vote_table(res.extra["self_consistency"]) + "\n")
    print(res.content)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    fields = generation_fields(args)
    if getattr(args, "adaptive", None) and getattr(args, "votes", None) is None:
        raise EdgeReasonError("--adaptive needs --votes N (the most samples to draw)")
    prompt = args.prompt
    if prompt is None:
        if sys.stdin.isatty():
            raise EdgeReasonError("give a prompt, or pipe one on standard input")
        prompt = sys.stdin.read().strip()
        if not prompt:
            raise EdgeReasonError("the prompt on standard input is empty")
    with load_engine(args) as engine:
        messages = _messages(args, prompt)
        if getattr(args, "votes", None) is not None:
            return _run_votes(args, engine, messages, fields)
        if args.json:
            res = engine.chat(messages, **fields)
            print(json.dumps(res.to_dict(), ensure_ascii=False))
        else:
            stream_to_terminal(engine.stream(messages, **fields))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    fields = generation_fields(args)
    with load_engine(args) as engine:
        history: list[dict[str, Any]] = [{"role": "system", "content": args.system}] if args.system else []
        sys.stderr.write(
            f"chatting with {engine.name} ({engine.reasoning_format.value}); /reset clears, /exit quits\n"
        )
        while True:
            try:
                line = input("> ")
            except EOFError:
                break
            if line.strip() in ("/exit", "/quit"):
                break
            if line.strip() == "/reset":
                history = history[:1] if args.system else []
                continue
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            while True:  # until a reply without tool calls: you answer each call, the model goes on
                try:
                    res = stream_to_terminal(engine.stream(history, **fields))
                except KeyboardInterrupt:
                    history.pop()
                    sys.stderr.write("\n(interrupted)\n")
                    break
                calls = res.tool_calls
                history.append(
                    {
                        "role": "assistant",
                        "content": res.content or None,
                        "tool_calls": [c.to_dict() for c in calls],
                    }
                    if calls
                    else {"role": "assistant", "content": res.content}
                )
                if not calls:
                    break
                try:
                    for c in calls:
                        result = input(f"result of {c.name}({c.arguments})> ")
                        history.append({"role": "tool", "tool_call_id": c.id, "content": result})
                except EOFError:
                    return 0
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..models import list_models

    entries = list_models(args.paths)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    print(f"{'NAME':<28} {'FORMAT':<6} {'ARCH':<10} {'QUANT':<8} {'SIZE':>9}  TEMPLATE  PATH")
    for e in entries:
        size = f"{e.size_bytes / 1e6:.1f}MB"
        print(
            f"{e.name[:28]:<28} {e.format:<6} {e.architecture[:10]:<10} {e.quantization:<8} {size:>9}  "
            f"{'yes' if e.has_chat_template else 'no':<8}  {e.path}"
        )
    return 0


# The server extra's packages (anyio and the rest come with them).
_SERVER_EXTRA = ("fastapi", "uvicorn", "prometheus_client")


def cmd_serve(args: argparse.Namespace) -> int:
    from ..server.settings import settings_from_args

    if any(_missing(name) for name in _SERVER_EXTRA):
        raise MissingExtraError("edgereason serve", "server")
    from ..server.app import serve

    logging.getLogger("edgereason.server").setLevel(logging.INFO)
    if args.model_positional is not None:  # `edgereason serve MODEL`, as `vllm serve MODEL`
        if args.model is not None and args.model != args.model_positional:
            raise EdgeReasonError("give the model once: as MODEL or as --model")
        args.model = args.model_positional
    return serve(settings_from_args(args))


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ValueError:  # a module set to None in sys.modules
        return True


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgereason", description="On-device runtime for distilled reasoning models.")
    parser.add_argument("--version", action="version", version=f"edgereason {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: llama.cpp too)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="answer one prompt, streaming reasoning (stderr) and answer (stdout)")
    run.add_argument("prompt", nargs="?", default=None, help="the prompt (default: read standard input)")
    run.add_argument("--system", default=None, help="system message")
    run.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    run.add_argument(
        "--votes", type=int, default=None, metavar="N", help="self-consistency: vote over N samples"
    )
    run.add_argument(
        "--adaptive",
        choices=["beta", "esc"],
        default=None,
        help="with --votes: stop once the vote is settled",
    )
    add_model_flags(run)
    add_adapter_flags(run)
    add_generation_flags(run)
    add_tool_flags(run)
    add_function_tool_flags(run)
    run.set_defaults(func=cmd_run)

    chat = sub.add_parser("chat", help="interactive terminal chat keeping history")
    chat.add_argument("--system", default=None)
    add_model_flags(chat)
    add_adapter_flags(chat)
    add_generation_flags(chat)
    add_tool_flags(chat)
    add_function_tool_flags(chat)
    chat.set_defaults(func=cmd_chat)

    models = sub.add_parser("models", help="list the models EdgeReason can find")
    models.add_argument("paths", nargs="*", help="extra model paths to describe")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)

    from ..server.settings import add_settings_flags

    serve = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP server over one engine (continuous batching)"
    )
    serve.add_argument("model_positional", nargs="?", default=None, metavar="MODEL", help="same as --model")
    add_settings_flags(serve)
    serve.set_defaults(func=cmd_serve)

    from .convert_cmd import add_convert_parser

    add_convert_parser(sub)

    from ..bench import add_bench_parser

    add_bench_parser(sub, add_model_flags)

    from ..app.command import add_app_parser

    add_app_parser(sub, add_model_flags, load_engine)

    from .eval_cmd import add_eval_parser

    add_eval_parser(sub, add_model_flags, add_adapter_flags)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s %(name)s: %(message)s"
    )
    if args.verbose < 2:
        logging.getLogger("edgereason.backends.llama_cpp").setLevel(logging.ERROR)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        apply_env(args)
        return func(args)
    except EdgeReasonError as exc:
        sys.stderr.write(f"edgereason: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
