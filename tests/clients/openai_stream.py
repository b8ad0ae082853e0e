#!/usr/bin/env python3
"""Drive an OpenAI-compatible endpoint with the official `openai` client.

Sends N chat completions on T threads (streamed by default, or plain with
--plain), then prints ONE JSON object on stdout: one record per request
and the totals. An answer counts complete only when a chunk (or the plain
answer) carried a non-null finish_reason; a stream that just stops is not
complete, even without an exception.

Used by tests/real_servers.rs; runnable by hand:
  python3 tests/clients/openai_stream.py --base-url http://127.0.0.1:8421/v1 \
      --model smollm2-135m --requests 24 --threads 8 --max-tokens 56
"""

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

# Short prompts that make a tiny model talk for a while; request i uses
# TOPICS[i % len], so two runs with the same --requests do the same work.
TOPICS = [
    "lighthouses",
    "sourdough bread",
    "the moon",
    "mountain trains",
    "honey bees",
    "old maps",
    "jazz drummers",
    "glaciers",
]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8421/v1")
    p.add_argument("--model", required=True)
    p.add_argument("--requests", type=int, default=24)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=56)
    p.add_argument("--plain", action="store_true", help="non-streamed answers")
    p.add_argument(
        "--mixed",
        action="store_true",
        help="alternate streamed (even requests) and plain (odd) answers",
    )
    p.add_argument(
        "--include-usage",
        action="store_true",
        help="send stream_options.include_usage and record the usage chunk",
    )
    # The client's own retries would hide failures from the server side.
    p.add_argument("--max-retries", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    p.add_argument("--api-key", default="baton-test")
    p.add_argument(
        "--context-words",
        type=int,
        default=0,
        help="put this many words of context before each question (a long prompt the "
        "server must prefill before its first token; each request's is different)",
    )
    return p.parse_args()


# A passage to repeat for --context-words: ordinary English, so the token
# count per word is what a real document gives (about 1.3 for SmolLM2).
PASSAGE = (
    "The keeper climbed the spiral stairs every evening to light the lamp, "
    "counting the steps as his father had, and wrote the weather in a book "
    "that nobody read but the next keeper. "
).split()


def context(i, words):
    """`words` words of context for request i, unlike any other request's
    from the first word (so no server's prompt cache shortens its prefill)."""
    body = [PASSAGE[k % len(PASSAGE)] for k in range(words)]
    return f"Notes from log book {i}: " + " ".join(body)


def one(client, args, i):
    stream = not args.plain and not (args.mixed and i % 2 == 1)
    rec = {
        "index": i,
        "stream": stream,
        "ok": False,
        "finish_reason": None,
        "content_chunks": 0,
        "text_len": 0,
        "usage": None,
        "error": None,
        "seconds": 0.0,
    }
    kwargs = dict(
        model=args.model,
        messages=(
            [{"role": "system", "content": context(i, args.context_words)}]
            if args.context_words
            else []
        )
        + [{"role": "user", "content": f"Tell me a long story about {TOPICS[i % len(TOPICS)]}."}],
        max_tokens=args.max_tokens,
        temperature=0,
    )
    t0 = time.monotonic()
    try:
        if stream:
            if args.include_usage:
                kwargs["stream_options"] = {"include_usage": True}
            text = []
            for chunk in client.chat.completions.create(stream=True, **kwargs):
                if getattr(chunk, "usage", None) is not None:
                    rec["usage"] = chunk.usage.model_dump()
                for choice in chunk.choices or []:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        rec["content_chunks"] += 1
                        text.append(delta.content)
                    if choice.finish_reason is not None:
                        rec["finish_reason"] = choice.finish_reason
            rec["text_len"] = len("".join(text))
        else:
            r = client.chat.completions.create(**kwargs)
            if r.choices:
                rec["finish_reason"] = r.choices[0].finish_reason
                content = r.choices[0].message.content or ""
                rec["text_len"] = len(content)
                rec["content_chunks"] = 1 if content else 0
            if r.usage is not None:
                rec["usage"] = r.usage.model_dump()
        rec["ok"] = rec["finish_reason"] is not None
    except Exception as e:  # noqa: BLE001 - every failure is data here
        rec["error"] = f"{type(e).__name__}: {e}"
    rec["seconds"] = round(time.monotonic() - t0, 3)
    return rec


def main():
    args = parse_args()
    try:
        import openai
    except ImportError:
        print("the `openai` package is missing: pip install openai", file=sys.stderr)
        return 3
    # One shared client, as an application would have: its connection pool
    # keeps connections to the endpoint alive between requests.
    client = openai.OpenAI(
        base_url=args.base_url,
        api_key=args.api_key,
        max_retries=args.max_retries,
        timeout=args.timeout,
    )
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, args.threads)) as pool:
        records = list(pool.map(lambda i: one(client, args, i), range(args.requests)))
    wall = time.monotonic() - t0
    completed = sum(1 for r in records if r["ok"])
    failed = sum(1 for r in records if r["error"] is not None)
    report = {
        "base_url": args.base_url,
        "openai_version": openai.__version__,
        "requests": records,
        "totals": {
            "requests": len(records),
            "wall_seconds": round(wall, 3),
            "completed": completed,
            "failed": failed,
            "without_finish_reason": sum(
                1 for r in records if r["error"] is None and r["finish_reason"] is None
            ),
            "with_usage": sum(1 for r in records if r["usage"] is not None),
            "content_chunks": sum(r["content_chunks"] for r in records),
        },
    }
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
