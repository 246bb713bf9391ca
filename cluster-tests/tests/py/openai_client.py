"""Drives an Inferno cluster with the official `openai` package.

Usage: python3 openai_client.py BASE_URL MODEL API_KEY
Exits non-zero (with an assertion message) if anything a user of the
OpenAI client relies on does not work.
"""
import sys

import openai

base_url, model, api_key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

# Model list.
ids = [m.id for m in client.models.list().data]
assert model in ids, ids

# Chat, whole answer.
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "List three colors."}],
    max_tokens=16,
    temperature=0,
    seed=1,
)
assert r.object == "chat.completion", r
assert r.choices[0].message.role == "assistant"
assert r.choices[0].message.content, r
assert r.choices[0].finish_reason in ("stop", "length"), r
assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 16, r.usage
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

# Chat, streamed, with usage in the last chunk.
text, finish, usage = "", None, None
for chunk in client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Count from one to five."}],
    max_tokens=12,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
assert text, "empty streamed answer"
assert finish in ("stop", "length"), finish
assert usage is not None and usage.completion_tokens <= 12, usage

# Greedy is deterministic: the same request twice gives the same text.
again = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "List three colors."}],
    max_tokens=16,
    temperature=0,
    seed=1,
)
assert again.choices[0].message.content == r.choices[0].message.content

# Completions, whole and streamed; max_tokens and ignore_eos (extra_body).
c = client.completions.create(
    model=model, prompt="January, February, March,", max_tokens=8, temperature=0,
    extra_body={"ignore_eos": True},
)
assert c.object == "text_completion", c
assert c.choices[0].text, c
assert c.usage.completion_tokens == 8, c.usage
assert c.choices[0].finish_reason == "length", c
streamed = "".join(
    ch.choices[0].text
    for ch in client.completions.create(
        model=model, prompt="January, February, March,", max_tokens=8, temperature=0,
        stream=True, extra_body={"ignore_eos": True},
    )
    if ch.choices
)
assert streamed == c.choices[0].text, (streamed, c.choices[0].text)

# Stop strings.
s = client.completions.create(
    model=model, prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[" 7"],
)
assert " 7" not in s.choices[0].text, s.choices[0].text

# Errors come back as the client's typed exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError:
    pass
try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], temperature=7)
    raise AssertionError("temperature 7 was accepted")
except openai.BadRequestError:
    pass

print("openai client: ok")

# Structured outputs: every answer under a JSON Schema validates, whole and
# streamed, greedy and sampled; json_object gives an object; a schema that
# does not compile is a 400 before any work.
import json

import jsonschema

person = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "pets": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "kind": {"enum": ["cat", "dog", "fish"]},
                    "name": {"type": "string", "maxLength": 16},
                },
                "required": ["kind", "name"],
                "additionalProperties": False,
            },
            "minItems": 1,
            "maxItems": 2,
        },
        "nickname": {"anyOf": [{"type": "string", "maxLength": 12}, {"type": "null"}]},
    },
    "required": ["name", "age", "pets", "nickname"],
    "additionalProperties": False,
}
fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": person, "strict": True}}
ask = [{"role": "user", "content": "Invent a person with pets, as JSON."}]
for temperature in (0, 1):
    r = client.chat.completions.create(
        model=model, messages=ask, response_format=fmt, temperature=temperature, seed=3,
        max_tokens=300,
    )
    assert r.choices[0].finish_reason == "stop", r
    jsonschema.validate(json.loads(r.choices[0].message.content), person)
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in client.chat.completions.create(
            model=model, messages=ask, response_format=fmt, temperature=temperature, seed=3,
            max_tokens=300, stream=True,
        )
        if ch.choices
    )
    jsonschema.validate(json.loads(streamed), person)
    assert streamed == r.choices[0].message.content, (streamed, r.choices[0].message.content)

obj = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Three fruits, as JSON."}],
    response_format={"type": "json_object"}, temperature=0, max_tokens=200,
)
assert isinstance(json.loads(obj.choices[0].message.content), dict), obj

digits = client.completions.create(
    model=model, prompt="My PIN is", max_tokens=16, extra_body={"regex": "[0-9]{4}"},
)
assert len(digits.choices[0].text) == 4 and digits.choices[0].text.isdigit(), digits

try:
    client.chat.completions.create(
        model=model, messages=ask, max_tokens=8,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "bad", "schema": {"type": "frobnicate"}}},
    )
    raise AssertionError("a schema that does not compile was accepted")
except openai.BadRequestError as e:
    assert "json_schema" in str(e), e
