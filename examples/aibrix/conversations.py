"""Three conversations of three turns each, every conversation with its own long system prompt,
through the gateway with the official OpenAI SDK; prints which server answered each request and
its time to first token. Usage: python3 conversations.py [BASE_URL] [MODEL]

With mock-provider's vLLM mode the answering server names itself in `x-mock-name`; with real vLLM
servers read the access log's `upstream` field instead (the script prints `?`)."""

import sys
import time

import openai

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:1975/v1"
model = sys.argv[2] if len(sys.argv) > 2 else "Qwen/Qwen2.5-1.5B-Instruct"
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
for turn in range(1, 4):
    for conversation in range(1, 4):
        system = f"Conversation {conversation}. " + "You are a support assistant; answer briefly. " * 20
        messages = [{"role": "system", "content": system}]
        for earlier in range(1, turn):
            messages += [{"role": "user", "content": f"question {earlier}"},
                         {"role": "assistant", "content": f"answer {earlier}"}]
        messages.append({"role": "user", "content": f"question {turn}"})
        started = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, stream=True)
        first = None
        for chunk in raw.parse():
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.monotonic()
        ttft = ((first or time.monotonic()) - started) * 1000
        print(f"conversation {conversation} turn {turn} -> {raw.headers.get('x-mock-name', '?'):>2}"
              f"  first token {ttft:4.0f} ms")
