import { open, stat } from 'node:fs/promises';
import { readGgufFileInfo } from 'node-llama-cpp';
import { ModelError } from './provider.ts';

/**
 * llama.cpp aborts the whole process (not a catchable error) on some malformed GGUF files. Before a
 * file reaches it, its header is parsed in JavaScript and every tensor is checked to lie inside the
 * file, so a truncated download or a wrong file fails start-up with a clear message instead.
 */

/** Bytes per block and elements per block of the common ggml types. */
const ggmlTypeSizes: Record<number, { bytes: number; elements: number }> = {
  0: { bytes: 4, elements: 1 }, // F32
  1: { bytes: 2, elements: 1 }, // F16
  2: { bytes: 18, elements: 32 }, // Q4_0
  3: { bytes: 20, elements: 32 }, // Q4_1
  6: { bytes: 22, elements: 32 }, // Q5_0
  7: { bytes: 24, elements: 32 }, // Q5_1
  8: { bytes: 34, elements: 32 }, // Q8_0
  10: { bytes: 84, elements: 256 }, // Q2_K
  11: { bytes: 110, elements: 256 }, // Q3_K
  12: { bytes: 144, elements: 256 }, // Q4_K
  13: { bytes: 176, elements: 256 }, // Q5_K
  14: { bytes: 210, elements: 256 }, // Q6_K
  15: { bytes: 292, elements: 256 }, // Q8_K
  30: { bytes: 2, elements: 1 }, // BF16
};

interface GgufSummary {
  architecture: string;
  tensorCount: number;
  contextLength: number | undefined;
  hasChatTemplate: boolean;
  fileSize: number;
}

function invalid(path: string, reason: string, cause?: unknown): ModelError {
  return new ModelError(`The model file ${path} is not a usable GGUF file: ${reason}`, {
    code: 'model-file-invalid',
    isRetryable: false,
    cause,
  });
}

export async function validateGgufFile(path: string): Promise<GgufSummary> {
  const fileSize = (await stat(path)).size;
  const handle = await open(path, 'r');
  try {
    const magic = Buffer.alloc(8);
    await handle.read(magic, 0, 8, 0);
    if (magic.subarray(0, 4).toString('latin1') !== 'GGUF') throw invalid(path, 'wrong magic bytes');
    const version = magic.readUInt32LE(4);
    if (version !== 2 && version !== 3) throw invalid(path, `unsupported GGUF version ${version}`);
  } finally {
    await handle.close();
  }
  let info: Awaited<ReturnType<typeof readGgufFileInfo>>;
  try {
    info = await readGgufFileInfo(path, {
      logWarnings: false,
      spliceSplitFiles: false,
      sourceType: 'filesystem',
    });
  } catch (error) {
    throw invalid(path, 'the header cannot be parsed', error);
  }
  const metadata = info.metadata as unknown as Record<string, Record<string, unknown>>;
  const architecture = metadata.general?.architecture;
  if (typeof architecture !== 'string' || architecture === '') throw invalid(path, 'no general.architecture');
  const tensors = info.fullTensorInfo ?? info.tensorInfo ?? [];
  if (tensors.length === 0) throw invalid(path, 'no tensors');
  for (const tensor of tensors) {
    const elements = tensor.dimensions.reduce<number>((product, dimension) => product * Number(dimension), 1);
    if (!Number.isSafeInteger(elements) || elements <= 0)
      throw invalid(path, `tensor ${tensor.name} has bad dimensions`);
    const start = Number(tensor.fileOffset);
    if (!Number.isSafeInteger(start) || start < 0 || start > fileSize) {
      throw invalid(path, `tensor ${tensor.name} starts outside the file (truncated download?)`);
    }
    const size = ggmlTypeSizes[tensor.ggmlType];
    if (size && start + Math.ceil(elements / size.elements) * size.bytes > fileSize) {
      throw invalid(path, `tensor ${tensor.name} ends outside the file (truncated download?)`);
    }
  }
  const architectureMetadata = metadata[architecture] as Record<string, unknown> | undefined;
  const contextLength = architectureMetadata?.context_length;
  const tokenizer = metadata.tokenizer as Record<string, unknown> | undefined;
  if (!tokenizer?.ggml) throw invalid(path, 'no tokenizer');
  return {
    architecture,
    tensorCount: tensors.length,
    contextLength: typeof contextLength === 'number' ? contextLength : undefined,
    hasChatTemplate: typeof tokenizer.chat_template === 'string',
    fileSize,
  };
}
