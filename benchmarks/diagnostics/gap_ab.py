"""A/B of the 1-client serving path (the README's "Where the single-stream gap sits").

Variants, alternated per round, each a fresh server on loopback with the embedded model (2 threads,
3072 per slot, 8 slots): ``old`` (this package from the directory in $OLD_PYTHONPATH, e.g. a git worktree
of an earlier commit), ``new`` (this checkout), ``new-si<seconds>`` (this checkout with
``sys.setswitchinterval``), ``new-pure`` (this checkout with uvloop and httptools hidden, so that uvicorn
runs asyncio's loop and h11 even where they are installed: ``pip install uvloop httptools`` to compare),
``llama-server`` (the cached peer build). Per variant and round: a warm-up,
then 4 streamed greedy requests of TOK tokens; prints TTFT, median inter-token gap and tok/s (medians).

    python benchmarks/diagnostics/gap_ab.py [TOK=256] [ROUNDS=3] [old,new,new-si0.0005,llama-server]

THREADS=1 in the environment runs both servers' llama.cpp on one thread (default 2). Run it on an
otherwise idle machine; it is a diagnostic, not part of ``make bench``.
"""

import os
import statistics
import sys
from pathlib import Path

from edgereason.bench.peer import ALIAS, PROMPT, _client, stream_chat
from edgereason.models import embedded_model_path
from edgereason.peer import ServerLayout, find_llama_server, free_port, llama_server_args, run_server

MODEL = str(embedded_model_path())
THREADS = int(os.environ.get("THREADS", "2"))  # llama.cpp threads of both servers
LAYOUT = ServerLayout(threads=THREADS, ctx_per_slot=3072, slots=8)
RUN_MODULE = "import runpy; sys.argv = ['edgereason'] + sys.argv[1:]; runpy.run_module('edgereason', run_name='__main__')"


def argv(variant: str, port: int) -> list[str]:
    if variant == "llama-server":
        binary = find_llama_server()
        assert binary is not None, "build it first: python -m edgereason.peer build"
        return [
            str(binary),
            *llama_server_args(Path(MODEL), LAYOUT, port=port, extra_args=["--alias", ALIAS]),
        ]
    serve = ["serve", "--model", MODEL, "--port", str(port), "--threads", str(THREADS), "--n-ctx", "3072"]
    serve += ["--max-sequences", "8", "--alias", ALIAS]
    pre = f"sys.setswitchinterval({variant.split('-si')[1]}); " if "-si" in variant else ""
    if variant.endswith("-pure"):
        pre += "sys.modules['uvloop'] = None; sys.modules['httptools'] = None; "
    return [sys.executable, "-c", "import sys; " + pre + RUN_MODULE, *serve]


def main() -> None:
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    variants = sys.argv[3].split(",") if len(sys.argv) > 3 else ["old", "new", "new-si0.0005", "llama-server"]
    res: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
    for rnd in range(rounds):
        for v in variants:
            if v.startswith("old"):
                os.environ["PYTHONPATH"] = os.environ["OLD_PYTHONPATH"]
            else:
                os.environ.pop("PYTHONPATH", None)
            port = free_port()
            with run_server(argv(v, port), port, name=v) as srv, _client() as http:
                stream_chat(http, srv.base_url, [{"role": "user", "content": "Hi"}], 8)
                for _ in range(4):
                    r = stream_chat(http, srv.base_url, [{"role": "user", "content": PROMPT}], tokens)
                    assert r.ttft is not None
                    tok_s = r.completion_tokens / (r.finished - r.started)
                    res[v].append((r.ttft * 1000, statistics.median(r.gaps()) * 1000, tok_s))
            print(v, rnd, [tuple(round(x, 1) for x in t) for t in res[v][-4:]], flush=True)
    for v, rows in res.items():
        ttft, gap, tok_s = (statistics.median(c) for c in zip(*rows))
        print(
            f"{v:14s} median ttft {ttft:6.1f} ms  itl p50 {gap:6.2f} ms  tok/s {tok_s:6.1f}  (n={len(rows)})"
        )


if __name__ == "__main__":
    main()
