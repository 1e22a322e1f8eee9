// One streamed and one whole chat completion through the official openai Node SDK.
// Settings from the environment: EDGE_BASE_URL, EDGE_API_KEY, EDGE_MODEL; the edge's CA comes
// through NODE_EXTRA_CA_CERTS. Prints one JSON line with what came back; exits 1 on error.
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.EDGE_BASE_URL,
  apiKey: process.env.EDGE_API_KEY,
  timeout: 30_000,
  maxRetries: 0,
});
const model = process.env.EDGE_MODEL;
const messages = [{ role: "user", content: "hi" }];

const stream = await client.chat.completions.create({
  model,
  messages,
  max_tokens: 5,
  stream: true,
  stream_options: { include_usage: true },
});
let streamed = "";
let streamId = "";
let streamUsage = null;
for await (const chunk of stream) {
  streamId = chunk.id;
  for (const choice of chunk.choices) streamed += choice.delta.content ?? "";
  if (chunk.usage) streamUsage = chunk.usage;
}

const whole = await client.chat.completions.create({ model, messages, max_tokens: 5 });

let badKey = null;
try {
  await new OpenAI({ baseURL: process.env.EDGE_BASE_URL, apiKey: "sk-sb-wrong", maxRetries: 0 })
    .chat.completions.create({ model, messages });
} catch (error) {
  badKey = error.status ?? null;
}

console.log(
  JSON.stringify({
    stream: { id: streamId, text: streamed, usage: streamUsage },
    whole: { id: whole.id, text: whole.choices[0].message.content, usage: whole.usage },
    badKeyStatus: badKey,
  }),
);
