"""Decode throughput with and without a JSON schema, same server, same run.

Usage: python3 scripts/bench-structured.py URL API_KEY_FILE MODEL
8 concurrent chat requests of 160 tokens each (temperature 0.7, seeded):
unconstrained with ignore_eos, then every one under a 40-item array schema;
two rounds, printing tokens/s of each.
"""
import json, sys, time, concurrent.futures as cf, urllib.request
url, key, model = sys.argv[1], open(sys.argv[2]).read().strip(), sys.argv[3]
schema = {"type":"object","properties":{"items":{"type":"array","minItems":40,"maxItems":40,"items":{"type":"object","properties":{"name":{"type":"string","maxLength":12},"qty":{"type":"integer","minimum":1,"maximum":99},"kind":{"enum":["fruit","tool","toy"]}},"required":["name","qty","kind"],"additionalProperties":False}}},"required":["items"],"additionalProperties":False}
def one(constrained, i):
    body = {"model":model,"messages":[{"role":"user","content":f"List shop items as JSON ({i})."}],"max_tokens":160,"temperature":0.7,"seed":i}
    if constrained: body["response_format"]={"type":"json_schema","json_schema":{"name":"s","schema":schema}}
    else: body["ignore_eos"]=True
    req = urllib.request.Request(url+"/v1/chat/completions", json.dumps(body).encode(), {"Authorization":"Bearer "+key,"Content-Type":"application/json"})
    r = json.load(urllib.request.urlopen(req, timeout=600))
    return r["usage"]["completion_tokens"], r["choices"][0]["finish_reason"]
for rnd in range(2):
  for constrained in (False, True):
    t=time.time()
    with cf.ThreadPoolExecutor(8) as ex: res=list(ex.map(lambda i: one(constrained,i), range(8)))
    dt=time.time()-t; n=sum(r[0] for r in res)
    print(("constrained" if constrained else "free"), n, "tokens", round(dt,2), "s", round(n/dt,1), "tok/s", set(r[1] for r in res), flush=True)
