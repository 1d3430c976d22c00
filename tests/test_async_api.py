"""The asyncio API (achat, astream, acomplete) and chat_many on the embedded model, under concurrency."""

from __future__ import annotations

import asyncio
import time

import pytest

import edgereason as er

PROMPTS = [
    "What is 2 + 2?",
    "Name a color.",
    "Say hello.",
    "What is the capital of France?",
    "Count to three.",
    "Name an animal.",
    "What is 10 - 3?",
    "Name a fruit.",
]
GREEDY = {"max_tokens": 12, "temperature": 0}


def _ask(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


@pytest.fixture(scope="module")
def sync_replies(engine: er.Engine) -> list[str]:
    return [engine.chat(_ask(p), **GREEDY).content for p in PROMPTS]


def test_concurrent_achat_matches_sync(engine: er.Engine, sync_replies: list[str]) -> None:
    async def main() -> tuple[list[er.ChatResult], int, int]:
        ticks = 0
        peak = 0

        async def ticker() -> None:
            nonlocal ticks, peak
            while True:
                ticks += 1
                peak = max(peak, engine.live_sequences)
                await asyncio.sleep(0.05)  # a busier loop slows llama.cpp's threads on small machines

        tick = asyncio.create_task(ticker())
        results = await asyncio.gather(*(engine.achat(_ask(p), **GREEDY) for p in PROMPTS))
        tick.cancel()
        return results, ticks, peak

    results, ticks, peak = asyncio.run(main())
    assert [r.content for r in results] == sync_replies
    assert all(r.usage.completion_tokens <= 12 for r in results)
    assert ticks > 3  # the loop ran while the engine decoded
    assert peak > 1  # the eight requests were decoded together, not one after another


def test_astream_yields_chunks_of_the_reply(engine: er.Engine, sync_replies: list[str]) -> None:
    async def main() -> list[str]:
        async def one(prompt: str) -> str:
            parts = [c.text async for c in engine.astream(_ask(prompt), **GREEDY) if c.channel == "content"]
            assert len(parts) > 1
            return "".join(parts)

        return await asyncio.gather(*(one(p) for p in PROMPTS[:4]))

    assert asyncio.run(main()) == sync_replies[:4]


def test_acomplete_matches_complete(engine: er.Engine) -> None:
    want = engine.complete("The capital of France is", **GREEDY).content
    assert asyncio.run(engine.acomplete("The capital of France is", **GREEDY)).content == want


def test_cancelling_frees_the_sequences(engine: er.Engine) -> None:
    long = {"max_tokens": 400, "temperature": 0, "ignore_eos": True}

    async def main() -> None:
        task = asyncio.create_task(engine.achat(_ask("Tell a story."), **long))
        while engine.live_sequences == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async for _ in engine.astream(_ask("Tell a story."), **long):
            break  # leaving the iteration early cancels too

    asyncio.run(main())
    deadline = time.monotonic() + 5
    while engine.live_sequences:
        assert time.monotonic() < deadline, "a cancelled request still holds its sequence"
        time.sleep(0.02)


def test_achat_errors_are_the_librarys(engine: er.Engine) -> None:
    with pytest.raises(er.InvalidRequestError):
        asyncio.run(engine.achat(_ask("hi"), temperature=-1))


def test_chat_many_in_order(engine: er.Engine, sync_replies: list[str]) -> None:
    results = engine.chat_many([_ask(p) for p in PROMPTS], **GREEDY)
    assert [r.content for r in results] == sync_replies


def test_chat_many_past_a_full_queue(model_path: object, sync_replies: list[str]) -> None:
    # 2 slots and a queue of 2: the rest wait for earlier results instead of failing with CapacityError.
    with er.load(model_path, n_ctx=256, max_sequences=2, threads=1) as small:  # type: ignore[arg-type]
        small.max_queue = 2
        results = small.chat_many([_ask(p) for p in PROMPTS], **GREEDY)
    assert [r.content for r in results] == sync_replies
