#!/bin/bash
# py-spy (pip install py-spy; not a dependency) on `edgereason serve` during 4 x 512-token single-stream
# greedy requests; writes raw folded stacks (per thread, native frames) to /tmp/prof.txt. The README's
# "Profile" figures are shares of the engine thread's samples. Run from the repository root, idle machine.
set -e
PORT=18123
.venv/bin/python -m edgereason serve --port $PORT --threads 2 --n-ctx 3072 --max-sequences 8 --alias bench > /tmp/prof_srv.log 2>&1 &
SP=$!
for i in $(seq 60); do curl -s localhost:$PORT/health >/dev/null && break; sleep 1; done
.venv/bin/python - <<PY
from edgereason.bench.peer import stream_chat, _client, PROMPT
with _client() as h: stream_chat(h, "http://127.0.0.1:$PORT", [{"role":"user","content":"Hi"}], 8)
PY
.venv/bin/py-spy record -p $SP -o /tmp/prof.txt -f raw -r 200 --threads --native 2>/dev/null &
PS=$!
sleep 1
.venv/bin/python - <<PY
import statistics
from edgereason.bench.peer import stream_chat, _client, PROMPT
with _client() as h:
    for i in range(4):
        r = stream_chat(h, "http://127.0.0.1:$PORT", [{"role":"user","content":PROMPT}], 512)
        print("itl p50", statistics.median(r.gaps())*1000)
PY
kill -INT $PS; wait $PS
kill $SP
