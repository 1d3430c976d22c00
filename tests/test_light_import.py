from __future__ import annotations

import subprocess
import sys


def test_import_does_not_pull_training_stack() -> None:
    code = "import edgereason, edgereason.engine, edgereason.cli.main, sys; print(sorted({'torch','transformers','peft'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"
