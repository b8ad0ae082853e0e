#!/usr/bin/env python3
"""The `ollama` Python library against a host, as Open WebUI-style clients
use Ollama's own API. Prints one JSON object with what each call returned.

Usage: ollama_client.py --host URL --model M
"""
import argparse
import json
import sys

import ollama


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--missing-model", default="no-such-model:latest")
    a = p.parse_args()
    c = ollama.Client(host=a.host)
    out = {}
    msgs = [{"role": "user", "content": "hello"}]
    r = c.chat(model=a.model, messages=msgs, stream=False, options={"num_predict": 8})
    out["chat"] = {"text": r.message.content, "done": r.done, "eval_count": r.eval_count}
    parts = list(c.chat(model=a.model, messages=msgs, stream=True, options={"num_predict": 8}))
    out["chat_stream"] = {"chunks": len(parts), "done": parts[-1].done,
                          "text": "".join(p.message.content for p in parts)}
    g = list(c.generate(model=a.model, prompt="once upon a time", stream=True, options={"num_predict": 5}))
    out["generate_stream"] = {"chunks": len(g), "done": g[-1].done}
    e = c.embed(model=a.model, input=["a", "b"])
    out["embed"] = {"n": len(e.embeddings)}
    tags = c.list()
    out["tags"] = [m.model for m in tags.models]
    try:
        c.chat(model=a.missing_model, messages=msgs, stream=False)
        out["missing"] = {"raised": False}
    except ollama.ResponseError as err:
        out["missing"] = {"raised": True, "status": err.status_code, "error": err.error}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
