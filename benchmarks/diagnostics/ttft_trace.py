"""Where a streamed request's time to first token goes (the README's "Where the single-stream gap sits").

``server`` mode runs ``edgereason serve`` with timestamps (``time.monotonic``: one clock for both
processes) at the ASGI entry of each POST, around the engine's ``stream()`` call (render, tokenize,
submit), where the engine thread hands over the request's first chunk and where the event loop takes
it; it writes them to /tmp/ttft_trace.json every 2 s. ``client`` mode (another process) sends a warm-up
and N streamed greedy requests of 4 tokens with the same prompt (a prefix-cache hit after the first) and
prints the medians of each leg:

    python benchmarks/diagnostics/ttft_trace.py server serve --port 18141 --threads 2 --n-ctx 3072 \\
        --max-sequences 8 --alias bench &
    python benchmarks/diagnostics/ttft_trace.py client http://127.0.0.1:18141 30

A diagnostic for an otherwise idle machine, not part of ``make bench``.
"""

import json
import statistics
import sys
import threading
import time
from typing import Any

TRACE = "/tmp/ttft_trace.json"
LEGS = (
    ("client -> ASGI entry (client send, HTTP parse)", "sent", "asgi_in"),
    ("ASGI entry -> stream() (routing, validation, worker-thread hop)", "asgi_in", "stream_in"),
    ("stream(): render, tokenize, submit", "stream_in", "stream_out"),
    (
        "submit -> first chunk on the engine thread (wake, admit, decode, sample)",
        "stream_out",
        "engine_first",
    ),
    ("engine thread -> event loop", "engine_first", "loop_first"),
    ("event loop -> client (SSE write, client parse)", "loop_first", "got"),
    ("total: time to first token", "sent", "got"),
)


def server(argv: list[str]) -> int:
    import edgereason.engine as engine_mod
    import edgereason.job as job_mod
    import edgereason.server.app as app_mod
    import edgereason.server.metrics as metrics_mod
    from edgereason.cli.main import main

    stamps: dict[str, list[float]] = {
        "asgi_in": [],
        "stream_in": [],
        "stream_out": [],
        "engine_first": [],
        "loop_first": [],
    }

    def dump() -> None:
        seen = -1
        while True:
            time.sleep(2)
            if len(stamps["loop_first"]) != seen:
                seen = len(stamps["loop_first"])
                with open(TRACE, "w") as f:
                    json.dump(stamps, f)

    threading.Thread(target=dump, daemon=True).start()
    create_app, stream, deliver_to, chunk = (
        app_mod.create_app,
        engine_mod.Engine.stream,
        job_mod.ChatStream.deliver_to,
        metrics_mod.RequestTimer.chunk,
    )

    def traced_create_app(*a: Any, **k: Any) -> Any:
        app = create_app(*a, **k)

        async def traced(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["method"] == "POST":
                stamps["asgi_in"].append(time.monotonic())
            await app(scope, receive, send)

        traced.state = app.state  # type: ignore[attr-defined]
        return traced

    def traced_stream(self: Any, *a: Any, **k: Any) -> Any:
        stamps["stream_in"].append(time.monotonic())
        out = stream(self, *a, **k)
        stamps["stream_out"].append(time.monotonic())
        return out

    def traced_deliver_to(self: Any, sink: Any) -> None:
        first = [True]

        def traced_sink(event: object) -> None:
            if first[0] and isinstance(event, job_mod.Chunk):
                first[0] = False
                stamps["engine_first"].append(time.monotonic())
            sink(event)

        deliver_to(self, traced_sink)

    def traced_chunk(self: Any) -> None:
        if self._last is None:
            stamps["loop_first"].append(time.monotonic())
        chunk(self)

    app_mod.create_app = traced_create_app
    engine_mod.Engine.stream = traced_stream  # type: ignore[method-assign]
    job_mod.ChatStream.deliver_to = traced_deliver_to  # type: ignore[method-assign]
    metrics_mod.RequestTimer.chunk = traced_chunk  # type: ignore[method-assign]
    return main(argv)


def client(base: str, n: int) -> None:
    from edgereason.bench.peer import PROMPT, _client, stream_chat

    rows = []
    with _client() as http:
        stream_chat(http, base, [{"role": "user", "content": "Hi"}], 8)
        for _ in range(n):
            sent, p0 = time.monotonic(), time.perf_counter()
            r = stream_chat(http, base, [{"role": "user", "content": PROMPT}], 4)
            rows.append({"sent": sent, "got": sent + (r.token_times[0][0] - p0)})
    time.sleep(3)  # the server's next dump
    with open(TRACE) as f:
        stamps = json.load(f)
    skip = len(stamps["asgi_in"]) - n  # the warm-up
    for i, row in enumerate(rows):
        row.update({k: v[skip + i] for k, v in stamps.items()})
    for label, a, b in LEGS:
        ms = [(r[b] - r[a]) * 1000 for r in rows]
        print(f"{label:75s} median {statistics.median(ms):6.2f} ms (min {min(ms):.2f})")


if __name__ == "__main__":
    if sys.argv[1] == "server":
        sys.exit(server(sys.argv[2:]))
    client(sys.argv[2], int(sys.argv[3]))
