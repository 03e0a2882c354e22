import { tool } from '@langchain/core/tools';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { createRecordTools, sanitizeToolError } from '../record-tools.ts';

/**
 * The read-only record tools as LangChain tools (tool() with zod), for LangChain agents. They wrap
 * the same functions the core agent uses, scoped to the one PatientRecord they are made with.
 */
export function createLangChainRecordTools(
  record: PatientRecord,
  options: { manifestText: () => string; maxNoteTokens: number; countTokens: (text: string) => number },
) {
  return createRecordTools(record, options).map((recordTool) =>
    tool(
      (args: unknown) => {
        try {
          return recordTool.execute(recordTool.schema.parse(args)).text;
        } catch (error) {
          return `The tool failed: ${sanitizeToolError(error)}`;
        }
      },
      { name: recordTool.name, description: recordTool.description, schema: recordTool.schema as never },
    ),
  );
}
