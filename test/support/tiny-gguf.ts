import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type LlamaModel, type Token, TokenBias } from 'node-llama-cpp';

/**
 * Writes a tiny random-weight Gemma 3 GGUF (a few hundred KB) so the real node-llama-cpp path -
 * loading, JSON-schema grammar, the tool-call loop - runs in CI on a CPU. The weights are noise:
 * the grammar is what makes the output valid JSON. Models are generated, never committed.
 */

/** Gemma 3's chat template as published with the model (no system role; strict alternation). */
export const gemma3ChatTemplate = `{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
`;

const embeddingLength = 64;
const feedForwardLength = 128;
const headCount = 4;
const headCountKv = 2;
const headSize = 16;
const blockCount = 2;

const tokenTypeNormal = 1;
const tokenTypeUnknown = 2;
const tokenTypeControl = 3;
const tokenTypeByte = 6;

interface Vocabulary {
  tokens: string[];
  scores: number[];
  types: number[];
}

/** SPM vocabulary: control tokens, 256 byte tokens, then one token per printable character. */
function buildVocabulary(): Vocabulary {
  const tokens: string[] = [];
  const scores: number[] = [];
  const types: number[] = [];
  const add = (token: string, type: number, score = 0) => {
    tokens.push(token);
    types.push(type);
    scores.push(score);
  };
  add('<pad>', tokenTypeControl);
  add('<eos>', tokenTypeControl);
  add('<bos>', tokenTypeControl);
  add('<unk>', tokenTypeUnknown);
  add('<start_of_turn>', tokenTypeControl);
  add('<end_of_turn>', tokenTypeControl);
  for (let byte = 0; byte < 256; byte++) {
    add(`<0x${byte.toString(16).toUpperCase().padStart(2, '0')}>`, tokenTypeByte);
  }
  add('\n', tokenTypeNormal, -1);
  add('\t', tokenTypeNormal, -1);
  add('\u2581', tokenTypeNormal, -1);
  for (let code = 0x21; code <= 0x7e; code++) add(String.fromCharCode(code), tokenTypeNormal, -1);
  return { tokens, scores, types };
}

function blankTokens(vocabulary: Vocabulary): number[] {
  return vocabulary.tokens.flatMap((text, token) => (text === '<0x20>' || text === '\u2581' ? [token] : []));
}

const valueTypeU32 = 4;
const valueTypeI32 = 5;
const valueTypeF32 = 6;
const valueTypeBool = 7;
const valueTypeString = 8;
const valueTypeArray = 9;

type MetadataValue =
  | { type: 'u32'; value: number }
  | { type: 'i32'; value: number }
  | { type: 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'strings'; value: string[] }
  | { type: 'f32s'; value: number[] }
  | { type: 'i32s'; value: number[] };

class ByteWriter {
  private chunks: Buffer[] = [];
  length = 0;
  push(buffer: Buffer): void {
    this.chunks.push(buffer);
    this.length += buffer.length;
  }
  u32(value: number): void {
    const buffer = Buffer.alloc(4);
    buffer.writeUInt32LE(value);
    this.push(buffer);
  }
  i32(value: number): void {
    const buffer = Buffer.alloc(4);
    buffer.writeInt32LE(value);
    this.push(buffer);
  }
  u64(value: number): void {
    const buffer = Buffer.alloc(8);
    buffer.writeBigUInt64LE(BigInt(value));
    this.push(buffer);
  }
  f32(value: number): void {
    const buffer = Buffer.alloc(4);
    buffer.writeFloatLE(value);
    this.push(buffer);
  }
  string(value: string): void {
    const bytes = Buffer.from(value, 'utf8');
    this.u64(bytes.length);
    this.push(bytes);
  }
  padTo(alignment: number): void {
    const remainder = this.length % alignment;
    if (remainder !== 0) this.push(Buffer.alloc(alignment - remainder));
  }
  toBuffer(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

function writeValue(writer: ByteWriter, entry: MetadataValue): void {
  switch (entry.type) {
    case 'u32':
      writer.u32(valueTypeU32);
      writer.u32(entry.value);
      return;
    case 'i32':
      writer.u32(valueTypeI32);
      writer.i32(entry.value);
      return;
    case 'f32':
      writer.u32(valueTypeF32);
      writer.f32(entry.value);
      return;
    case 'bool':
      writer.u32(valueTypeBool);
      writer.push(Buffer.from([entry.value ? 1 : 0]));
      return;
    case 'string':
      writer.u32(valueTypeString);
      writer.string(entry.value);
      return;
    case 'strings':
      writer.u32(valueTypeArray);
      writer.u32(valueTypeString);
      writer.u64(entry.value.length);
      for (const item of entry.value) writer.string(item);
      return;
    case 'f32s':
      writer.u32(valueTypeArray);
      writer.u32(valueTypeF32);
      writer.u64(entry.value.length);
      for (const item of entry.value) writer.f32(item);
      return;
    case 'i32s':
      writer.u32(valueTypeArray);
      writer.u32(valueTypeI32);
      writer.u64(entry.value.length);
      for (const item of entry.value) writer.i32(item);
      return;
  }
}

interface TensorSpec {
  name: string;
  /** ggml order: innermost dimension first. */
  dimensions: number[];
  /** Norm weights are one (llama.cpp's converter has already added Gemma's +1; zero would zero every logit); others are small noise. */
  kind: 'norm' | 'weight';
}

function tensorSpecs(vocabularySize: number): TensorSpec[] {
  const specs: TensorSpec[] = [
    { name: 'token_embd.weight', dimensions: [embeddingLength, vocabularySize], kind: 'weight' },
    { name: 'output_norm.weight', dimensions: [embeddingLength], kind: 'norm' },
  ];
  for (let layer = 0; layer < blockCount; layer++) {
    const prefix = `blk.${layer}`;
    specs.push(
      { name: `${prefix}.attn_norm.weight`, dimensions: [embeddingLength], kind: 'norm' },
      {
        name: `${prefix}.attn_q.weight`,
        dimensions: [embeddingLength, headCount * headSize],
        kind: 'weight',
      },
      {
        name: `${prefix}.attn_k.weight`,
        dimensions: [embeddingLength, headCountKv * headSize],
        kind: 'weight',
      },
      {
        name: `${prefix}.attn_v.weight`,
        dimensions: [embeddingLength, headCountKv * headSize],
        kind: 'weight',
      },
      {
        name: `${prefix}.attn_output.weight`,
        dimensions: [headCount * headSize, embeddingLength],
        kind: 'weight',
      },
      { name: `${prefix}.attn_q_norm.weight`, dimensions: [headSize], kind: 'norm' },
      { name: `${prefix}.attn_k_norm.weight`, dimensions: [headSize], kind: 'norm' },
      { name: `${prefix}.post_attention_norm.weight`, dimensions: [embeddingLength], kind: 'norm' },
      { name: `${prefix}.ffn_norm.weight`, dimensions: [embeddingLength], kind: 'norm' },
      { name: `${prefix}.ffn_gate.weight`, dimensions: [embeddingLength, feedForwardLength], kind: 'weight' },
      { name: `${prefix}.ffn_up.weight`, dimensions: [embeddingLength, feedForwardLength], kind: 'weight' },
      { name: `${prefix}.ffn_down.weight`, dimensions: [feedForwardLength, embeddingLength], kind: 'weight' },
      { name: `${prefix}.post_ffw_norm.weight`, dimensions: [embeddingLength], kind: 'norm' },
    );
  }
  return specs;
}

/** A deterministic generator so every run writes the same bytes. */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state * 1664525 + 1013904223) >>> 0;
    return state / 0x100000000;
  };
}

export function buildTinyGguf(options: { contextLength?: number } = {}): Buffer {
  const vocabulary = buildVocabulary();
  const metadata: [string, MetadataValue][] = [
    ['general.architecture', { type: 'string', value: 'gemma3' }],
    ['general.name', { type: 'string', value: 'tiny-random-gemma3' }],
    ['general.alignment', { type: 'u32', value: 32 }],
    ['gemma3.context_length', { type: 'u32', value: options.contextLength ?? 8192 }],
    ['gemma3.embedding_length', { type: 'u32', value: embeddingLength }],
    ['gemma3.block_count', { type: 'u32', value: blockCount }],
    ['gemma3.feed_forward_length', { type: 'u32', value: feedForwardLength }],
    ['gemma3.attention.head_count', { type: 'u32', value: headCount }],
    ['gemma3.attention.head_count_kv', { type: 'u32', value: headCountKv }],
    ['gemma3.attention.key_length', { type: 'u32', value: headSize }],
    ['gemma3.attention.value_length', { type: 'u32', value: headSize }],
    ['gemma3.attention.layer_norm_rms_epsilon', { type: 'f32', value: 1e-6 }],
    ['gemma3.attention.sliding_window', { type: 'u32', value: 128 }],
    ['gemma3.rope.freq_base', { type: 'f32', value: 1_000_000 }],
    ['tokenizer.ggml.model', { type: 'string', value: 'llama' }],
    ['tokenizer.ggml.tokens', { type: 'strings', value: vocabulary.tokens }],
    ['tokenizer.ggml.scores', { type: 'f32s', value: vocabulary.scores }],
    ['tokenizer.ggml.token_type', { type: 'i32s', value: vocabulary.types }],
    ['tokenizer.ggml.bos_token_id', { type: 'u32', value: 2 }],
    ['tokenizer.ggml.eos_token_id', { type: 'u32', value: 1 }],
    ['tokenizer.ggml.unknown_token_id', { type: 'u32', value: 3 }],
    ['tokenizer.ggml.padding_token_id', { type: 'u32', value: 0 }],
    ['tokenizer.ggml.add_bos_token', { type: 'bool', value: true }],
    ['tokenizer.ggml.add_eos_token', { type: 'bool', value: false }],
    ['tokenizer.chat_template', { type: 'string', value: gemma3ChatTemplate }],
  ];
  const specs = tensorSpecs(vocabulary.tokens.length);

  const header = new ByteWriter();
  header.push(Buffer.from('GGUF', 'ascii'));
  header.u32(3);
  header.u64(specs.length);
  header.u64(metadata.length);
  for (const [key, value] of metadata) {
    header.string(key);
    writeValue(header, value);
  }
  const random = seededRandom(20260101);
  const data = new ByteWriter();
  const tensorData: Buffer[] = [];
  let offset = 0;
  for (const spec of specs) {
    const elements = spec.dimensions.reduce((product, dimension) => product * dimension, 1);
    const buffer = Buffer.alloc(elements * 4);
    for (let index = 0; index < elements; index++) {
      buffer.writeFloatLE(spec.kind === 'norm' ? 1 : (random() - 0.5) * 0.2, index * 4);
    }
    if (spec.name === 'token_embd.weight') {
      // The output reuses the embeddings: a zero row gives a zero logit, which random logits of the
      // other tokens usually beat, so the model rarely writes blanks (enum values can still hold them).
      for (const token of blankTokens(vocabulary))
        buffer.fill(0, token * embeddingLength * 4, (token + 1) * embeddingLength * 4);
    }
    header.string(spec.name);
    header.u32(spec.dimensions.length);
    for (const dimension of spec.dimensions) header.u64(dimension);
    header.u32(0); // F32
    header.u64(offset);
    tensorData.push(buffer);
    offset += buffer.length;
    const padding = (32 - (offset % 32)) % 32;
    if (padding) tensorData.push(Buffer.alloc(padding));
    offset += padding;
  }
  header.padTo(32);
  for (const chunk of tensorData) data.push(chunk);
  return Buffer.concat([header.toBuffer(), data.toBuffer()]);
}

const repositoryRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Writes the tiny model into test/.generated/ (gitignored) and returns its path. */
export function writeTinyGguf(path = join(repositoryRoot, 'test', '.generated', 'tiny-gemma3.gguf')): string {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, buildTinyGguf());
  return path;
}

/**
 * Random weights favour tokens that decode to nothing (<pad>, stray UTF-8 bytes) or to blanks, and the
 * grammar lets them fill strings: banning them makes the tiny model write visible characters.
 */
export function tinyModelTokenBias(model: LlamaModel): TokenBias {
  const bias = new TokenBias(model.tokenizer);
  const vocabulary = buildVocabulary();
  // End of generation (<eos>, <end_of_turn>) must stay possible once the grammar is complete.
  // Bytes from 0x80 are parts of multi-byte characters: alone they decode to nothing. ASCII bytes
  // (the space among them: enum values need it) stay. A token the grammar needs must never be banned
  // or biased down: at a dead end llama.cpp samples <pad> and fails.
  const banned = new Set(['<pad>', '<bos>', '<unk>', '<start_of_turn>', '\u2581']);
  vocabulary.tokens.forEach((text, token) => {
    const byte =
      vocabulary.types[token] === tokenTypeByte ? Number.parseInt(text.slice(3, 5), 16) : undefined;
    if (banned.has(text) || (byte !== undefined && byte >= 0x80)) bias.set(token as Token, 'never');
  });
  return bias;
}

// `npx node test/support/tiny-gguf.ts` writes the model and prints its path (for trying it by hand).
if (import.meta.url === `file://${process.argv[1]}`) console.log(writeTinyGguf());
