import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * An OpenAI-compatible inference server in test code (what TGI, vLLM, llama.cpp server and Ollama's
 * /v1 expose): it records every request to /v1/chat/completions and replays scripted responses, text
 * or native `tool_calls`.
 */
export interface ChatCompletionRequestBody {
  model: string;
  messages: {
    role: string;
    content: string;
    tool_call_id?: string;
    tool_calls?: { id: string; type: string; function: { name: string; arguments: string } }[];
  }[];
  tools?: {
    type: string;
    function: { name: string; description?: string; parameters?: Record<string, unknown> };
  }[];
  tool_choice?: unknown;
  max_tokens?: number;
  temperature?: number;
  response_format?: {
    type: string;
    json_schema?: { name: string; schema: Record<string, unknown>; strict?: boolean };
  };
}

export type ScriptedResponse =
  | {
      status?: number;
      /** Null with tool calls, as OpenAI-compatible servers answer them. */
      content: string | null;
      /** Native tool calls; arguments as a JSON string (OpenAI, vLLM) or an object (TGI). */
      toolCalls?: { id?: string; name: string; arguments: string | Record<string, unknown> }[];
      finishReason?: string;
      delayMs?: number;
      usage?: { prompt_tokens: number; completion_tokens: number };
    }
  | { status: number; error: string; delayMs?: number };

export type ServerReply = ScriptedResponse | ((body: ChatCompletionRequestBody) => ScriptedResponse);

export interface RecordedRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: ChatCompletionRequestBody;
}

export interface ScriptedInferenceServer {
  url: string;
  requests: RecordedRequest[];
  close(): Promise<void>;
}

export async function startScriptedInferenceServer(
  script: ServerReply[],
  fallback?: ServerReply,
): Promise<ScriptedInferenceServer> {
  const requests: RecordedRequest[] = [];
  const queue = [...script];
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', async () => {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as ChatCompletionRequestBody;
      requests.push({
        method: request.method ?? '',
        path: request.url ?? '',
        headers: request.headers,
        body,
      });
      const next = queue.shift() ?? fallback;
      const reply = typeof next === 'function' ? next(body) : next;
      if (!reply) {
        response.writeHead(500, { 'content-type': 'application/json' }).end('{"error":"script exhausted"}');
        return;
      }
      if (reply.delayMs) await new Promise((resolve) => setTimeout(resolve, reply.delayMs));
      if (response.destroyed) return;
      if ('error' in reply) {
        response
          .writeHead(reply.status, { 'content-type': 'application/json' })
          .end(JSON.stringify({ error: reply.error }));
        return;
      }
      response.writeHead(reply.status ?? 200, { 'content-type': 'application/json' }).end(
        JSON.stringify({
          id: `chatcmpl-${requests.length}`,
          object: 'chat.completion',
          created: 0,
          model: body.model,
          choices: [
            {
              index: 0,
              message: {
                role: 'assistant',
                content: reply.content,
                ...(reply.toolCalls
                  ? {
                      tool_calls: reply.toolCalls.map((call, index) => ({
                        id: call.id ?? `call_${requests.length}_${index}`,
                        type: 'function',
                        function: { name: call.name, arguments: call.arguments },
                      })),
                    }
                  : {}),
              },
              finish_reason: reply.finishReason ?? 'stop',
            },
          ],
          usage: { ...(reply.usage ?? { prompt_tokens: 100, completion_tokens: 20 }), total_tokens: 0 },
        }),
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
