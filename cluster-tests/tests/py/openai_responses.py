"""The Responses API through the official `openai` package.

Usage:
  python3 openai_responses.py create BASE_URL MODEL API_KEY
      makes a function-call response and a streamed text response, and
      prints their ids (JSON) on the last line;
  python3 openai_responses.py continue BASE_URL MODEL API_KEY IDS_JSON
      (meant for another coordinator, after the first one is killed)
      reads the stored responses back, continues the call with its result
      through previous_response_id, and deletes one.
Exits non-zero (with an assertion message) if anything fails.
"""
import json
import sys

import jsonschema
import openai

mode, base_url, model, api_key = sys.argv[1:5]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

params = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}
tools = [{"type": "function", "name": "get_weather", "description": "Current weather in a city",
          "parameters": params, "strict": True}]

if mode == "create":
    r = client.responses.create(model=model, input="What is the weather in Paris?", tools=tools,
                                tool_choice="required", temperature=0)
    assert r.object == "response" and r.status == "completed", r
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather", r.output
    jsonschema.validate(json.loads(calls[0].arguments), params)

    events = list(client.responses.create(model=model, input="Say hello.", instructions="Answer in one short sentence.",
                                          max_output_tokens=24, temperature=0, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds
    assert kinds[-1] in ("response.completed", "response.incomplete"), kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text and final.output_text == text, (text, final)
    assert final.usage.output_tokens > 0, final.usage

    # A streamed function call reassembles to a valid call.
    events = list(client.responses.create(model=model, input="Weather in Rome?", tools=tools,
                                          tool_choice="required", temperature=0, stream=True))
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    jsonschema.validate(json.loads(args), params)
    assert events[-1].response.output[0].arguments == args
    print(json.dumps({"call": r.id, "call_id": calls[0].call_id, "text": final.id, "text_output": text}))
elif mode == "continue":
    ids = json.loads(sys.argv[5])
    got = client.responses.retrieve(ids["text"])
    assert got.output_text == ids["text_output"], got
    r = client.responses.create(model=model, previous_response_id=ids["call"], tools=tools, tool_choice="none",
                                input=[{"type": "function_call_output", "call_id": ids["call_id"],
                                        "output": "Sunny, 21 degrees Celsius."}],
                                max_output_tokens=48, temperature=0)
    assert r.previous_response_id == ids["call"], r
    assert r.output_text.strip(), r
    assert any(w in r.output_text.lower() for w in ("sunny", "21")), r.output_text
    client.responses.delete(ids["text"])
    try:
        client.responses.retrieve(ids["text"])
        raise AssertionError("a deleted response is still there")
    except openai.NotFoundError:
        pass
else:
    raise SystemExit(f"unknown mode {mode}")
