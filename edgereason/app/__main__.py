"""``python -m edgereason.app [flags]``: the same as ``edgereason app [flags]``."""

from __future__ import annotations

import sys

from edgereason.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["app", *sys.argv[1:]]))
