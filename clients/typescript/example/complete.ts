// One streamed completion, one whole completion and one refused request against Switchboard's
// router over gRPC (HTTP/2 + TLS), with the client generated from protos/ (docs/CLIENTS.md).
//
//   source ../../.devstack/env   # with `make run` going: the API key, CA and router address
//   npx tsc -p tsconfig.json && node dist/example/complete.js
//
// Prints one JSON object a line: {"call": ..., ...}. Exits 1 when a call fails unexpectedly.
import { readFileSync } from "node:fs";

import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { ChatMessageSchema, Role } from "../src/gen/switchboard/common/v1/common_pb.js";
import { RouterService } from "../src/gen/switchboard/router/v1/router_pb.js";
import { BadRequestSchema, ErrorInfoSchema } from "../src/rpc/google/rpc/error_details_pb.js";

const CALL_TIMEOUT_MS = 30_000;

function setting(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

function print(line: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

const apiKey = setting("SWITCHBOARD_API_KEY");
const model = process.env.SWITCHBOARD_MODEL ?? "switchboard/demo";
// The router's public port asks for no client certificate: trust its CA, send the API key.
const bearer: Interceptor = (next) => (request) => {
  request.header.set("authorization", `Bearer ${apiKey}`);
  return next(request);
};
const transport = createGrpcTransport({
  baseUrl: `https://${setting("SWITCHBOARD_ROUTER_ADDR")}`,
  nodeOptions: { ca: readFileSync(setting("SWITCHBOARD_TLS_CA")) },
  interceptors: [bearer],
});
const router = createClient(RouterService, transport);
const messages = [create(ChatMessageSchema, { role: Role.USER, content: "Say hello" })];

async function stream(): Promise<void> {
  let text = "";
  let generationId = "";
  for await (const event of router.streamCompletion(
    { model, messages, maxTokens: 8 },
    { timeoutMs: CALL_TIMEOUT_MS },
  )) {
    switch (event.event.case) {
      case "start":
        generationId = event.event.value.generationId;
        break;
      case "delta":
        text += event.event.value.text;
        break;
      case "end":
        print({
          call: "StreamCompletion",
          generationId,
          text,
          completionTokens: Number(event.event.value.usage?.completionTokens ?? 0n),
          costUsd: event.event.value.costUsd,
        });
        break;
    }
  }
}

async function unary(): Promise<void> {
  const reply = await router.createCompletion(
    { model, messages, maxTokens: 8 },
    { timeoutMs: CALL_TIMEOUT_MS },
  );
  print({
    call: "CreateCompletion",
    generationId: reply.generationId,
    text: reply.text,
    completionTokens: Number(reply.usage?.completionTokens ?? 0n),
  });
}

async function refused(): Promise<void> {
  try {
    await router.createCompletion({ model, messages: [] }, { timeoutMs: CALL_TIMEOUT_MS });
    print({ call: "CreateCompletion(no messages)", unexpected: "it succeeded" });
    process.exitCode = 1;
  } catch (caught) {
    const error = ConnectError.from(caught);
    // grpc-status-details-bin: a google.rpc.Status whose details are Any messages.
    const info = error.findDetails(ErrorInfoSchema)[0];
    const bad = error.findDetails(BadRequestSchema)[0];
    print({
      call: "CreateCompletion(no messages)",
      code: Code[error.code],
      reason: info?.reason ?? "",
      domain: info?.domain ?? "",
      violations: (bad?.fieldViolations ?? []).map((v) => ({
        field: v.field,
        description: v.description,
      })),
    });
  }
}

try {
  await stream();
  await unary();
  await refused();
} catch (caught) {
  const error = ConnectError.from(caught);
  print({ error: `${Code[error.code]}: ${error.rawMessage}` });
  process.exitCode = 1;
}
