"""The ``edgereason`` command: thin wrappers over the Python API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .. import __version__
from ..errors import EdgeReasonError

log = logging.getLogger("edgereason")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr, exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _thinking(value: str) -> bool | str:
    table = {"on": True, "true": True, "off": False, "false": False, "auto": "auto"}
    if value.lower() not in table:
        raise argparse.ArgumentTypeError(f"invalid choice {value!r} (use on, off or auto)")
    return table[value.lower()]


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=None, help="GGUF path, 'default' (embedded SmolLM2), or a name in $EDGEREASON_MODELS_DIR")
    p.add_argument("--n-ctx", type=int, default=None, help="context tokens shared by all sequences")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--chat-template", default=None, help="a jinja chat template file to use instead of the model's")
    p.add_argument("--reasoning-format", choices=["deepseek-r1", "qwen3", "none"], default=None, help="override detection")


def add_generation_flags(p: argparse.ArgumentParser) -> None:
    """Flags that map one-to-one onto GenerationOptions fields (unset flags keep the defaults)."""
    p.add_argument("--max-tokens", type=int, default=None, help="cap on generated tokens")
    p.add_argument("--temperature", "-t", type=float, default=None, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repeat-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--thinking", type=_thinking, default=None, help="on | off | auto: force thinking open or skip it")


_GEN_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop", "thinking")


def generation_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in _GEN_FIELDS if getattr(args, k, None) is not None}


def load_engine(args: argparse.Namespace) -> Any:
    import edgereason as er

    template = None
    if args.chat_template:
        try:
            with open(args.chat_template, encoding="utf-8") as fh:
                template = fh.read()
        except OSError as exc:
            raise EdgeReasonError(f"cannot read chat template {args.chat_template}: {exc.strerror}") from None
    return er.load(
        args.model, n_ctx=args.n_ctx, threads=args.threads, chat_template=template, reasoning_format=args.reasoning_format
    )


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
    dim = _Dim()
    wrote_reasoning = False
    for chunk in stream:
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


def cmd_run(args: argparse.Namespace) -> int:
    fields = generation_fields(args)
    with load_engine(args) as engine:
        messages = _messages(args, args.prompt)
        if args.json:
            res = engine.chat(messages, **fields)
            print(json.dumps(res.to_dict(), ensure_ascii=False))
        else:
            stream_to_terminal(engine.stream(messages, **fields))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    fields = generation_fields(args)
    with load_engine(args) as engine:
        history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
        sys.stderr.write(f"chatting with {engine.name} ({engine.reasoning_format.value}); /reset clears, /exit quits\n")
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
            try:
                res = stream_to_terminal(engine.stream(history, **fields))
            except KeyboardInterrupt:
                history.pop()
                sys.stderr.write("\n(interrupted)\n")
                continue
            history.append({"role": "assistant", "content": res.content})
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
        print(f"{e.name[:28]:<28} {e.format:<6} {e.architecture[:10]:<10} {e.quantization:<8} {size:>9}  "
              f"{'yes' if e.has_chat_template else 'no':<8}  {e.path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgereason", description="On-device runtime for distilled reasoning models.")
    parser.add_argument("--version", action="version", version=f"edgereason {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: llama.cpp too)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="answer one prompt, streaming reasoning (stderr) and answer (stdout)")
    run.add_argument("prompt")
    run.add_argument("--system", default=None, help="system message")
    run.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    add_model_flags(run)
    add_generation_flags(run)
    run.set_defaults(func=cmd_run)

    chat = sub.add_parser("chat", help="interactive terminal chat keeping history")
    chat.add_argument("--system", default=None)
    add_model_flags(chat)
    add_generation_flags(chat)
    chat.set_defaults(func=cmd_chat)

    models = sub.add_parser("models", help="list the models EdgeReason can find")
    models.add_argument("paths", nargs="*", help="extra model paths to describe")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)

    from ..bench import add_bench_parser

    add_bench_parser(sub, add_model_flags)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s %(name)s: %(message)s")
    if args.verbose < 2:
        logging.getLogger("edgereason.backends.llama_cpp").setLevel(logging.ERROR)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
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
