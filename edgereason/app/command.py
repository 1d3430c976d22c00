"""``edgereason app``: the CLI subcommand that loads a model and serves the chat app."""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from typing import Any

from edgereason.errors import EdgeReasonError
from edgereason.surface import ChatEngine


def _name_path(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"invalid adapter {value!r} (use NAME=PATH)")
    return name, path


def add_app_parser(
    sub: Any,
    add_model_flags: Callable[[argparse.ArgumentParser], None],
    load_engine: Callable[[argparse.Namespace], ChatEngine],
) -> None:
    p = sub.add_parser("app", help="local Gradio chat app: watch the model think, steer budgets, see votes")
    add_model_flags(p)
    p.add_argument(
        "--adapter",
        type=_name_path,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="LoRA adapter GGUF",
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also create a public Gradio share link")
    p.set_defaults(func=lambda args: cmd_app(args, load_engine))


def cmd_app(args: argparse.Namespace, load_engine: Callable[[argparse.Namespace], ChatEngine]) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise EdgeReasonError("the app needs gradio: pip install 'edgereason[app]'")
    from .ui import launch

    engine = load_engine(args)
    try:
        for name, path in args.adapter:
            engine.load_adapter(name, path)
        launch(engine, host=args.host, port=args.port, share=args.share)
    finally:
        engine.close()
    return 0
