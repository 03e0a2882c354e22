import { tool } from '@langchain/core/tools';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { createRecordTools, type ToolResult } from '../record-tools.ts';

/**
 * The read-only record tools as LangChain tools (tool() with their zod schemas), bound to the one
 * PatientRecord they are made with: the event's patient. What each call showed the model is handed to
 * `onResult`, so the run knows what its draft may cite and which notes the model read.
 */
export function createLangChainRecordTools(
  record: PatientRecord,
  options: {
    manifestText: () => string;
    maxNoteTokens: number;
    countTokens: (text: string) => number;
    onResult?: (result: ToolResult) => void;
  },
) {
  return createRecordTools(record, options).map((recordTool) =>
    tool(
      (args: unknown) => {
        const result = recordTool.execute(recordTool.schema.parse(args));
        options.onResult?.(result);
        return result.text;
      },
      { name: recordTool.name, description: recordTool.description, schema: recordTool.schema as never },
    ),
  );
}
