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
    model=model, messages=[{"role": "user", "content": "Describe a cat as a JSON object with keys name and age."}],
    response_format={"type": "json_object"}, temperature=0, max_tokens=200,
)
assert obj.choices[0].finish_reason == "stop", obj
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

# 30 schemas of increasing difficulty, greedy and sampled: every answer
# validates (formats included).
# Numbers are bounded, fractions by multipleOf: without bounds a number is a
# valid prefix forever (a small model at temperature 0 writes 1000000... or
# 1.1111... until max_tokens).
S, B = {"type": "string", "maxLength": 20}, {"type": "boolean"}
I = {"type": "integer", "minimum": -1000, "maximum": 1000}
N = {"type": "number", "minimum": -100, "maximum": 100, "multipleOf": 0.01}


def obj(props, required=None):
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required,
            "additionalProperties": False}


schemas = [
    S, I, B, {"enum": ["red", "green", "blue"]},
    {"type": "integer", "minimum": 10, "maximum": 20},
    {"type": "number", "minimum": -1.5, "exclusiveMaximum": 2.5, "multipleOf": 0.25},
    {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
    {"type": "string", "format": "date"}, {"type": "string", "format": "email", "maxLength": 40},
    {"type": "string", "format": "uuid"}, {"type": "string", "format": "ipv4"},
    obj({"a": S}), obj({"a": I, "b": B}), obj({"a": S, "b": I}, required=["a"]),
    {"type": "array", "items": I, "minItems": 2, "maxItems": 4},
    {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3},
    obj({"list": {"type": "array", "items": S, "minItems": 1, "maxItems": 3}}),
    obj({"inner": obj({"x": N, "y": N})}),
    obj({"v": {"anyOf": [I, S]}}), obj({"v": {"anyOf": [{"type": "null"}, obj({"k": I})]}}),
    obj({"when": {"type": "string", "format": "date"}, "who": {"type": "string", "format": "email", "maxLength": 40}}),
    obj({"score": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.1}, "ok": B}),
    {"type": "array", "items": obj({"id": I, "tag": {"enum": ["a", "b"]}}), "minItems": 1, "maxItems": 2},
    obj({"a": obj({"b": obj({"c": obj({"d": S})})})}),
    obj({"name": S, "age": {"type": "integer", "minimum": 0, "maximum": 120}, "email": {"type": "string", "format": "email", "maxLength": 40}}, required=["name"]),
    {"$defs": {"pt": obj({"x": I, "y": I})}, **obj({"from": {"$ref": "#/$defs/pt"}, "to": {"$ref": "#/$defs/pt"}})},
    obj({"kind": {"const": "circle"}, "r": {"type": "number", "exclusiveMinimum": 0, "maximum": 100, "multipleOf": 0.5}}),
    {"oneOf": [obj({"cat": S}), obj({"dog": I})]},
    obj({"matrix": {"type": "array", "items": {"type": "array", "items": I, "maxItems": 3}, "maxItems": 3}}),
    obj({"order": obj({"id": {"type": "string", "format": "uuid"}, "items": {"type": "array", "items": obj({"sku": {"type": "string", "pattern": "^[0-9]{4}$"}, "qty": {"type": "integer", "minimum": 1, "maximum": 9}}), "minItems": 1, "maxItems": 3}, "paid": B, "note": {"anyOf": [S, {"type": "null"}]}})}),
]
assert len(schemas) == 30
checker = jsonschema.FormatChecker()


def decimal_multiple_of(validator, step, instance, schema):
    # jsonschema divides binary floats (0.3 / 0.1 = 2.9999999999999996 fails);
    # a JSON number is decimal text, so check it in decimal.
    from decimal import Decimal
    if validator.is_type(instance, "number") and Decimal(str(instance)) % Decimal(str(step)) != 0:
        yield jsonschema.ValidationError(f"{instance} is not a multiple of {step}")


Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"multipleOf": decimal_multiple_of})
for i, schema in enumerate(schemas):
    for temperature in (0, 1):
        r = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Answer with JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}},
            temperature=temperature, seed=i, max_tokens=400,
        )
        text = r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop", (i, temperature, text)
        try:
            Validator(schema, format_checker=checker).validate(json.loads(text))
        except Exception as e:
            raise AssertionError(f"schema {i} at temperature {temperature}: {text!r}: {e}")

# Log-probabilities: under greedy decoding the sampled token is its step's
# most likely one, and the tokens spell the answer.
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Name a fruit."}],
    max_tokens=8, temperature=0, logprobs=True, top_logprobs=3,
)
content = r.choices[0].logprobs.content
# The end-of-turn token that stops an answer is counted but has no text.
ended = 1 if r.choices[0].finish_reason == "stop" else 0
assert len(content) in (r.usage.completion_tokens, r.usage.completion_tokens - ended), (len(content), r.usage)
for t in content:
    assert len(t.top_logprobs) == 3, t
    assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == t.logprob, t
    assert t.logprob <= 0 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob, t
assert bytes(b for t in content for b in t.bytes).decode("utf-8", "replace") == r.choices[0].message.content
streamed = []
for chunk in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Name a fruit."}],
    max_tokens=8, temperature=0, logprobs=True, top_logprobs=3, stream=True,
):
    if chunk.choices and chunk.choices[0].logprobs:
        streamed += chunk.choices[0].logprobs.content
assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
r = client.completions.create(model=model, prompt="One, two,", max_tokens=4, temperature=0, logprobs=2)
lp = r.choices[0].logprobs
assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4, lp
assert "".join(lp.tokens) == r.choices[0].text, lp

# n choices: one answer holds them all, and a seed fixes every one of them.
def four(seed):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Tell me a short story."}],
        max_tokens=12, temperature=1, seed=seed, n=4,
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3], r
    # Every choice's tokens are counted; the prompt once.
    assert 4 <= r.usage.completion_tokens <= 4 * 12, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    return [c.message.content for c in r.choices]
a, b = four(11), four(11)
assert a == b, (a, b)
assert len(set(a)) > 1, a
assert four(12) != a
chosen = {}
for chunk in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Tell me a short story."}],
    max_tokens=12, temperature=1, seed=11, n=4, stream=True,
):
    for c in chunk.choices:
        chosen[c.index] = chosen.get(c.index, "") + (c.delta.content or "")
assert [chosen[i] for i in range(4)] == a, (chosen, a)
