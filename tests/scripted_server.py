"""A scripted OpenAI-shaped server (stdlib, real HTTP on loopback) for what a real one rarely does, and for
driving the remote executor on the same scripted outputs as a local scripted backend."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any


@dataclasses.dataclass
class Scripted:
    """Answers ``GET {base}/models`` and ``POST {base}/chat/completions``: the queued ``replies`` first, then
    choice i of a request with ``seed`` writes ``text(model, seed + i)`` (default "The answer is {seed}.")."""

    base: str = "/v1"
    replies: list[tuple[int, dict[str, str], Any]] = dataclasses.field(default_factory=list)
    ignore_n: bool = False
    calls: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    port: int = 0
    text: Callable[[str, int], str] = lambda model, seed: f"The answer is {seed}."
    models: tuple[str, ...] = ("m",)
    tokenize: bool = False  # serve POST /tokenize (a token per byte, as tests/scripted.py's backends)

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        if self.replies:
            return self.replies.pop(0)
        n = 1 if self.ignore_n else int(body.get("n") or 1)
        seed = body.get("seed", 0)
        texts = [self.text(body.get("model", ""), seed + i) for i in range(n)]
        choices = [
            {"index": i, "message": {"content": t}, "finish_reason": "stop"} for i, t in enumerate(texts)
        ]
        return 200, {}, {"choices": choices, "usage": {"prompt_tokens": 9, "completion_tokens": 5 * n}}


@contextlib.contextmanager
def scripted_server(script: Scripted, port: int | None = None) -> Iterator[Scripted]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, status: int, headers: dict[str, str], body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            script.calls.append((self.path, {}))
            if self.path == f"{script.base}/models":
                self._send(200, {}, {"data": [{"id": m, "owned_by": "someone"} for m in script.models]})
            else:
                self._send(404, {}, {"error": {"message": "not found"}})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.calls.append((self.path, body))
            if self.path == "/tokenize" and script.tokenize:  # llama-server's, a token per byte
                self._send(200, {}, {"tokens": list(body["content"].encode())})
                return
            if self.path != f"{script.base}/chat/completions":
                self._send(404, {}, {"error": {"message": "not found"}})
                return
            status, headers, answer = script.answer(body)
            if status != 200 or not body.get("stream"):
                self._send(status, headers, answer)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for ch in answer["choices"]:
                delta = {"index": ch["index"], "delta": {"content": ch["message"]["content"]}}
                done = {"index": ch["index"], "delta": {}, "finish_reason": "stop"}
                for event in ({"choices": [delta]}, {"choices": [done]}):
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port or 0), Handler)
    script.port = srv.server_address[1]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield script
    finally:
        srv.shutdown()
        srv.server_close()
