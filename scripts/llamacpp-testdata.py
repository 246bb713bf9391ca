#!/usr/bin/env python3
"""Regenerates a model's llama.cpp reference data for the tokenizer and
chat-template tests: token ids from llama-server's /tokenize for the texts of
backends/tests/data/llamacpp_tokens.json, and prompts from its
/apply-template (run with --jinja) for a few conversations.

    python3 scripts/llamacpp-testdata.py MODEL.gguf NAME
writes backends/tests/data/llamacpp_NAME.json. LLAMA_BIN is the llama.cpp
bin directory (default: what ../shared/anchors/llamacpp/build.sh prints)."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
model, name = sys.argv[1], sys.argv[2]
bin_dir = os.environ.get("LLAMA_BIN") or subprocess.run(
    ["bash", os.path.join(root, "..", "shared", "anchors", "llamacpp", "build.sh")],
    check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
server = subprocess.Popen([os.path.join(bin_dir, "llama-server"), "-m", model, "--jinja",
                           "--host", "127.0.0.1", "--port", str(port), "-t", "1", "-c", "2048"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base = f"http://127.0.0.1:{port}"


def post(path, body):
    req = urllib.request.Request(base + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=60))


try:
    for _ in range(240):
        try:
            urllib.request.urlopen(base + "/health", timeout=2)
            break
        except Exception:
            time.sleep(0.5)
    texts = [e["text"] for e in json.load(open(os.path.join(
        root, "backends/tests/data/llamacpp_tokens.json")))]
    tokens = [{"text": t, "ids": post("/tokenize", {"content": t, "add_special": False,
                                                    "parse_special": True})["tokens"]}
              for t in texts]
    conversations = [
        [{"role": "user", "content": "What is 2+2?"}],
        [{"role": "system", "content": "You are terse."},
         {"role": "user", "content": "Name a prime."},
         {"role": "assistant", "content": "7"},
         {"role": "user", "content": "Another one, please."}],
        [{"role": "user", "content": "Ünïcödé\nand\ttabs  "}],
    ]
    templates = []
    for msgs in conversations:
        try:
            prompt = post("/apply-template", {"messages": msgs})["prompt"]
        except Exception as e:  # a model without a template
            print(f"apply-template failed: {e}", file=sys.stderr)
            break
        templates.append({"messages": msgs, "prompt": prompt})
    out = os.path.join(root, f"backends/tests/data/llamacpp_{name}.json")
    with open(out, "w") as f:
        json.dump({"model": os.path.basename(model), "tokens": tokens, "templates": templates},
                  f, ensure_ascii=False, indent=1)
    print(out)
finally:
    server.terminate()
    server.wait()
