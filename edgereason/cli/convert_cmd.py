"""``edgereason convert``: HF / PEFT / GGUF checkpoints to GGUF, MLX or ONNX (``edgereason.convert.convert``).

The conversion code needs the training stack (torch, transformers); it is imported only when the
command runs, so ``import edgereason`` and the other commands stay light.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

QUANT_HELP = (
    "gguf: f32 f16 bf16 q8_0 q6_k q5_k_m q4_k_m q4_0 (default f16); mlx: f32 f16 bf16 8 4 (default f16); "
    "onnx: fp32 int8 int4 (default fp32)"
)
EXIT_VERIFY_FAILED = 1


def add_convert_parser(sub: Any) -> None:
    """Register the ``convert`` subcommand on the CLI's subparsers."""
    p = sub.add_parser(
        "convert",
        help="convert a Hugging Face checkpoint, PEFT adapter or GGUF to GGUF, MLX or ONNX",
        description="Convert SRC (a Hugging Face checkpoint folder or a .gguf file) to GGUF, MLX or ONNX, "
        "writing an edgereason.json manifest beside (GGUF) or inside (MLX, ONNX) the result.",
    )
    p.add_argument("src", type=Path, help="Hugging Face checkpoint folder, or a .gguf file")
    p.add_argument(
        "-o", "--out", type=Path, required=True, help="output .gguf file (gguf) or folder (mlx, onnx)"
    )
    p.add_argument("--to", choices=("gguf", "mlx", "onnx"), default="gguf", help="target format")
    p.add_argument("--quant", default=None, help=QUANT_HELP)
    p.add_argument("--adapter", type=Path, default=None, metavar="PEFT_DIR", help="a PEFT LoRA for SRC")
    p.add_argument(
        "--merge",
        action="store_true",
        help="merge --adapter into the weights (default: export it as the target's adapter file)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="compare the result's logits with transformers (exit 1 if a check fails)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args: argparse.Namespace) -> int:
    from ..convert import convert
    from ..convert.pipeline import describe_result, manifest_json

    logging.getLogger("edgereason.convert").setLevel(logging.INFO)
    result = convert(
        args.src,
        args.out,
        to=args.to,
        quant=args.quant,
        adapter=args.adapter,
        merge=args.merge,
        verify=args.verify,
        force=args.force,
    )
    if args.json:
        print(manifest_json(result))
    else:
        print(describe_result(result))
    if result.verified is False:
        sys.stderr.write("edgereason: verification failed: the converted model does not match its source\n")
        return EXIT_VERIFY_FAILED
    return 0
