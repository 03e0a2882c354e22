import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { loadConfig } from '../../src/config/load-config.ts';
import { silentLogger } from '../../src/log.ts';
import { createRecordImagesStage, withImagingScopes } from '../../src/pipeline/record-images-stage.ts';

/**
 * One configuration routes each task to its model (issue 18): text stays with `model` (27B), images go to
 * `model.vision` (MedGemma 4B) and `imaging.medsiglip`; without `model.vision` no image is fetched or read.
 * Bad values stop start-up with the key and where it came from.
 */
const directory = () => mkdtempSync(path.join(tmpdir(), 'vision-config-'));

function withFile(yaml: string, env: Record<string, string> = {}) {
  const cwd = directory();
  writeFileSync(path.join(cwd, 'service.yaml'), yaml);
  return loadConfig({ env: { EHR_AGENT_CONFIG: 'service.yaml', ...env }, cwd });
}

describe('imaging configuration', () => {
  it('reads no image unless model.vision is set, and routes images to it while text stays with the drafting model', () => {
    const fhir = new FhirClient({ baseUrl: 'http://127.0.0.1:1/fhir' });
    const plain = loadConfig({ env: {}, cwd: directory() });
    expect(plain.model.vision).toBeUndefined();
    expect(createRecordImagesStage(plain, fhir, silentLogger())).toBeUndefined();

    const routed = withFile(
      'model:\n  provider: remote\n  remote:\n    endpointUrl: http://vllm-27b:8000\n  vision:\n    endpointUrl: http://vllm-4b:8000\n',
      { EHR_AGENT_IMAGING__PACS__BASE_URL: 'http://pacs.example/dicom-web' },
    );
    expect(routed.model.remote.endpointUrl).toBe('http://vllm-27b:8000');
    expect(routed.model.vision).toMatchObject({
      endpointUrl: 'http://vllm-4b:8000',
      model: 'google/medgemma-4b-it',
    });
    expect(routed.imaging.pacs.baseUrl).toBe('http://pacs.example/dicom-web');
    expect(createRecordImagesStage(routed, fhir, silentLogger())).toBeTypeOf('function');
  });

  it('names the key and line of a bad value, and wants MedSigLIP labels with its endpoint', () => {
    expect(() => withFile('model:\n  vision:\n    endpointUrl: not a url\n')).toThrow(
      /service\.yaml:3: "model\.vision\.endpointUrl"/,
    );
    expect(() => withFile('imaging:\n  maxDimension: 5000\n')).toThrow(/"imaging\.maxDimension"/);
    expect(() =>
      withFile('imaging:\n  medsiglip:\n    endpointUrl: http://medsiglip.example/classify\n'),
    ).toThrow(/imaging\.medsiglip\.labels must list candidate labels/);
    expect(() => withFile('imaging:\n  pacs:\n    baseUrl: ftp://pacs.example/\n')).toThrow(
      /"imaging\.pacs\.baseUrl"/,
    );
  });

  it('asks for the imaging scopes only when images are read, keeping a scope the site already gives a type', () => {
    const config = withFile(
      [
        'auth:',
        '  backend:',
        '    mode: smart-backend',
        '    clientId: service',
        '    scopes: [system/Patient.rs, system/Media.r]',
        '  launch:',
        '    clientId: review',
        '    allowedIssuers: [https://ehr.example/fhir]',
        '    scopes: [launch, openid, fhirUser, patient/Patient.r]',
        '',
      ].join('\n'),
    );
    expect(withImagingScopes(config.auth, config)).toBe(config.auth);
    const auth = withImagingScopes(config.auth, {
      model: { vision: { endpointUrl: 'http://vllm:8000' } as never },
    });
    expect(auth.backend.mode === 'smart-backend' && auth.backend.scopes).toEqual([
      'system/Patient.rs',
      'system/Media.r',
      'system/ImagingStudy.rs',
      'system/DiagnosticReport.rs',
      'system/Endpoint.r',
    ]);
    expect(auth.launch?.scopes).toEqual([
      'launch',
      'openid',
      'fhirUser',
      'patient/Patient.r',
      'patient/Media.r',
      'patient/ImagingStudy.r',
      'patient/DiagnosticReport.r',
      'user/Endpoint.r',
    ]);
  });
});
