"""Function tools through the official `openai` package, against a cluster
serving a model whose chat template supports tools (Qwen2.5).

Usage: python3 openai_tools.py BASE_URL MODEL API_KEY
Exits non-zero (with an assertion message) if a tool call does not parse,
does not validate against its function's schema, or does not stream as
OpenAI's clients expect.
"""
import json
import sys

import jsonschema
import openai

base_url, model, api_key = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=300)

weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
clock = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 40}},
            "required": ["timezone"],
        },
    },
}
schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (weather, clock)}


def chat(messages, **kw):
    return client.chat.completions.create(
        model=model, messages=messages, temperature=0, seed=7, max_tokens=160, **kw
    )


def checked_calls(r, what):
    """The calls of answer `r`, each with a known name and valid arguments."""
    choice = r.choices[0]
    calls = choice.message.tool_calls or []
    assert calls, f"{what}: no tool call: {choice.message}"
    assert choice.finish_reason == "tool_calls", (what, choice)
    ids = set()
    for call in calls:
        assert call.type == "function", (what, call)
        assert call.id.startswith("call_") and call.id not in ids, (what, call)
        ids.add(call.id)
        assert call.function.name in schemas, (what, call)
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, schemas[call.function.name])
    return calls


ask_weather = [{"role": "user", "content": "What is the weather like in Paris right now?"}]

# required: the answer is a call, and its arguments validate.
required = chat(ask_weather, tools=[weather], tool_choice="required")
calls = checked_calls(required, "required")
assert calls[0].function.name == "get_weather", calls
assert required.choices[0].message.content is None, required

# A named function is the one called, even when another fits better.
named = chat(
    ask_weather,
    tools=[weather, clock],
    tool_choice={"type": "function", "function": {"name": "get_time"}},
    parallel_tool_calls=False,
)
calls = checked_calls(named, "named")
assert [c.function.name for c in calls] == ["get_time"], calls

# auto: a question that needs the tool calls it; one that does not gets text.
auto = chat(ask_weather, tools=[weather, clock])
calls = checked_calls(auto, "auto")
assert calls[0].function.name == "get_weather", calls
plain = chat([{"role": "user", "content": "Write a haiku about the sea."}], tools=[weather, clock])
assert plain.choices[0].message.tool_calls is None, plain
assert plain.choices[0].finish_reason == "stop", plain
assert "sea" in (plain.choices[0].message.content or "").lower(), plain

# Two turns: the call goes back with the tool's result, and the model
# answers from it (tool_choice "none": the 0.5B model would call again).
call = checked_calls(required, "required")[0]
turn2 = chat(
    ask_weather
    + [
        required.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18, "sky": "sunny"})},
    ],
    tools=[weather],
    tool_choice="none",
)
answer = turn2.choices[0].message.content or ""
assert turn2.choices[0].finish_reason == "stop", turn2
assert turn2.choices[0].message.tool_calls is None, turn2
assert "18" in answer, answer

# Several cities: every call validates (Qwen2.5-Coder-0.5B makes one call
# here; the grammar and the parser allow several, see the coordinator's
# tests), and parallel_tool_calls=false allows exactly one.
two_cities = [{"role": "user", "content": "What is the weather in Paris and in London? Call get_weather once for each city."}]
both = chat(two_cities, tools=[weather], tool_choice="required")
for c in checked_calls(both, "two cities"):
    assert json.loads(c.function.arguments)["city"] in ("Paris", "London"), c
single = chat(two_cities, tools=[weather], tool_choice="required", parallel_tool_calls=False)
assert len(checked_calls(single, "single")) == 1, single

# Streaming: the deltas reassemble to the same calls as the whole answer.
streamed = {}
finish = None
for chunk in chat(two_cities, tools=[weather], tool_choice="required", stream=True):
    if not chunk.choices:
        continue
    delta = chunk.choices[0].delta
    assert not delta.content, delta
    for d in delta.tool_calls or []:
        entry = streamed.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
        if d.id:
            assert entry["id"] is None, "a call's id comes once"
            entry["id"] = d.id
        if d.function and d.function.name:
            entry["name"] = d.function.name
        if d.function and d.function.arguments:
            entry["arguments"] += d.function.arguments
    finish = chunk.choices[0].finish_reason or finish
assert finish == "tool_calls", finish
whole = [(c.function.name, c.function.arguments) for c in both.choices[0].message.tool_calls]
assert [(streamed[i]["name"], streamed[i]["arguments"]) for i in sorted(streamed)] == whole, (streamed, whole)
assert all(e["id"] and e["id"].startswith("call_") for e in streamed.values()), streamed

print("tools: ok")
