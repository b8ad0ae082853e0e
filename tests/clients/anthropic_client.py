#!/usr/bin/env python3
"""The official `anthropic` SDK against a base URL, as Claude Code-style tools
use it. Prints one JSON object: per request the text, stop reason and the
error (type and status) when there was one.

Usage: anthropic_client.py --base-url URL --model M [--stream] [--requests N]
"""
import argparse
import json
import sys

import anthropic


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--requests", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=16)
    a = p.parse_args()
    client = anthropic.Anthropic(base_url=a.base_url, api_key="unused", max_retries=0)
    out = []
    for i in range(a.requests):
        rec = {"ok": False}
        try:
            msgs = [{"role": "user", "content": f"say something {i}"}]
            if a.stream:
                text = []
                events = []
                with client.messages.stream(model=a.model, max_tokens=a.max_tokens, messages=msgs) as s:
                    for ev in s:
                        events.append(ev.type)
                        if ev.type == "content_block_delta" and getattr(ev.delta, "type", "") == "text_delta":
                            text.append(ev.delta.text)
                    final = s.get_final_message()
                rec.update(ok=True, text="".join(text), stop_reason=final.stop_reason, events=events,
                           output_tokens=final.usage.output_tokens)
            else:
                m = client.messages.create(model=a.model, max_tokens=a.max_tokens, messages=msgs)
                rec.update(ok=True, text="".join(b.text for b in m.content if b.type == "text"),
                           stop_reason=m.stop_reason, output_tokens=m.usage.output_tokens)
        except anthropic.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            rec.update(status=e.status_code, error_type=(body.get("error") or {}).get("type"),
                       top_type=body.get("type"), message=str(e))
        except Exception as e:  # noqa: BLE001 - report anything, the test judges
            rec.update(error=f"{type(e).__name__}: {e}")
        out.append(rec)
    json.dump({"requests": out}, sys.stdout)


if __name__ == "__main__":
    main()
