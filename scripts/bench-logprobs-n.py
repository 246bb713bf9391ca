"""What logprobs and n cost, same server, same run.

Usage: python3 scripts/bench-logprobs-n.py URL API_KEY_FILE MODEL
1. Decode: 8 concurrent chat requests of 128 tokens (temperature 0.7,
   seeded, ignore_eos), without log-probabilities, then with
   logprobs=true and top_logprobs=20; two rounds, tokens/s of each.
2. n: a fresh ~1,000-token prompt asked once with n=4 (max_tokens 16),
   then a fresh one as 4 concurrent requests without n; wall time of each
   (both leave 4 answers); two rounds.
"""
import json, sys, time, uuid, concurrent.futures as cf, urllib.request

url, key, model = sys.argv[1], open(sys.argv[2]).read().strip(), sys.argv[3]


def post(body):
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=600))


def decode(logprobs, i):
    body = {"model": model, "messages": [{"role": "user", "content": f"Tell me a long story ({i})."}],
            "max_tokens": 128, "temperature": 0.7, "seed": i, "ignore_eos": True}
    if logprobs:
        body.update(logprobs=True, top_logprobs=20)
    r = post(body)
    if logprobs:
        assert len(r["choices"][0]["logprobs"]["content"]) == r["usage"]["completion_tokens"]
    return r["usage"]["completion_tokens"]


def prompt():
    words = " ".join(["parcel", "label", "weight", "harbour", "ship", "dawn"] * 160)
    return f"Rules {uuid.uuid4().hex}: {words}"


def ask(system, n):
    body = {"model": model, "max_tokens": 16, "temperature": 0.7, "ignore_eos": True, "n": n,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]}
    return post(body)


for rnd in range(2):
    rates = {}
    for lp in (False, True):
        t = time.time()
        with cf.ThreadPoolExecutor(8) as ex:
            n = sum(ex.map(lambda i: decode(lp, i), range(8)))
        dt = time.time() - t
        rates[lp] = n / dt
        print(("logprobs+top20" if lp else "no logprobs"), n, "tokens", round(dt, 2), "s",
              round(n / dt, 1), "tok/s", flush=True)
    print("round", rnd, "logprobs/free", round(rates[True] / rates[False], 3), flush=True)
for rnd in range(2):
    t = time.time()
    r = ask(prompt(), 4)
    one = time.time() - t
    assert len(r["choices"]) == 4
    system = prompt()
    t = time.time()
    with cf.ThreadPoolExecutor(4) as ex:
        list(ex.map(lambda _: ask(system, 1), range(4)))
    four = time.time() - t
    print("round", rnd, "prompt", r["usage"]["prompt_tokens"], "tokens: n=4", round(one, 2), "s; 4 requests",
          round(four, 2), "s; ratio", round(four / one, 2), flush=True)
