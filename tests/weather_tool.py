"""The weather function that the tool-calling test and the serving benchmark both send.

tests/test_serve_qwen.py proves Qwen2.5-Coder calls it with valid arguments, and
bench/serve.py's mixed load sends it (tool_choice "required") to measure constrained
tool calls: one definition, so the benchmark times exactly the request the test checks.
It lives beside the tests, as serve_process.py does, because the test is its specification;
the benchmark puts this folder on its import path. Plain data: no pytest, no giraffe.
"""

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
