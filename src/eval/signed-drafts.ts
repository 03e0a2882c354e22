export async function runSignedReport(_flags: { fhirBase?: string; out: string }): Promise<void> {
  throw new Error('not yet');
}
