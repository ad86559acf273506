// Drives a PetalsSharp `petals api` server with the official `openai` npm package and prints one JSON line of
// results for the C# test (OpenAiNpmTests) to assert. Env: OPENAI_DIR (folder holding node_modules/openai),
// BASE_URL (http://HOST:PORT/v1), MODEL (the model id).
const path = require("path");
const OpenAI = require(path.join(process.env.OPENAI_DIR, "node_modules", "openai"));

async function main() {
  const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: "not-needed", maxRetries: 0 });
  const model = process.env.MODEL;
  const messages = [
    { role: "system", content: "Be brief." },
    { role: "user", content: "Tell me about cats" },
  ];
  const out = {};

  const models = await client.models.list();
  out.models = models.data.map((m) => m.id);

  const chat = await client.chat.completions.create({ model, messages, temperature: 0, max_tokens: 10 });
  out.chat = { text: chat.choices[0].message.content, finish: chat.choices[0].finish_reason, usage: chat.usage };

  let streamed = "";
  let streamFinish = null;
  const stream = await client.chat.completions.create({ model, messages, temperature: 0, max_tokens: 10, stream: true });
  for await (const chunk of stream) {
    const choice = chunk.choices[0];
    if (!choice) continue;
    streamed += choice.delta?.content ?? "";
    if (choice.finish_reason) streamFinish = choice.finish_reason;
  }
  out.chatStream = { text: streamed, finish: streamFinish };

  const completion = await client.completions.create({ model, prompt: "Once upon a time", temperature: 0, max_tokens: 8, stop: ["zzz"] });
  out.completion = { text: completion.choices[0].text, finish: completion.choices[0].finish_reason };

  let streamedCompletion = "";
  const cstream = await client.completions.create({ model, prompt: "Once upon a time", temperature: 0, max_tokens: 8, stop: ["zzz"], stream: true });
  for await (const chunk of cstream) streamedCompletion += chunk.choices[0]?.text ?? "";
  out.completionStream = { text: streamedCompletion };

  // The SDK asks for base64 unless told otherwise and decodes it to numbers.
  const embeddings = await client.embeddings.create({ model, input: ["a cat", "Tell me about cats"] });
  out.embeddings = { vectors: embeddings.data.map((d) => d.embedding), usage: embeddings.usage };

  out.errors = {};
  for (const [name, request] of [
    ["n2", { model, messages, n: 2 }],
    ["unknownModel", { model: "no-such-model", messages }],
  ]) {
    try {
      await client.chat.completions.create(request);
      out.errors[name] = { raised: false };
    } catch (e) {
      out.errors[name] = { raised: true, isApiError: e instanceof OpenAI.APIError, status: e.status, param: e.param ?? null, code: e.code ?? null };
    }
  }
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.log(JSON.stringify({ fatal: String(e && e.stack ? e.stack : e) }));
  process.exit(1);
});
