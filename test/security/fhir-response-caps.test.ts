import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import type { Binary, DocumentReference, Encounter } from 'fhir/r4.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FhirClient, ResponseTooLargeError } from '../../fhir/fhir-client.ts';
import { capNoteText, readNoteText, truncationMarker } from '../../fhir/note-text.ts';
import { OperationOutcomeError } from '../../fhir/operation-outcome.ts';
import { retrievePatientRecord } from '../../fhir/patient-history.ts';
import { type FhirTestServer, startFhirTestServer } from '../fhir/fhir-test-server.ts';
import { create, type SeededChart, seedChart } from '../fhir/seed.ts';
import {
  draftsFor,
  finishedEncounter,
  idOnlyNotification,
  postNotification,
  startSandboxService,
  waitForIdleQueue,
} from '../integration/service-harness.ts';

/**
 * Issue 10, section 4: what the EHR sends back is bounded. A response over the cap is refused while
 * it streams in (the connection dropped, not read to the end), never asked for again, and a note
 * whose Binary is over the cap is left out of the record while the draft goes on.
 */

const megabyte = 1024 * 1024;

interface StreamingServer {
  url: string;
  /** Requests received, in order. */
  requests: string[];
  /** Body bytes the server managed to hand to the socket, per request. */
  bytesSent: number[];
  close(): Promise<void>;
}

/** A plain HTTP server whose handler may stream; it counts what it sent, so a test sees the client stop reading. */
async function startStreamingServer(
  handler: (
    request: IncomingMessage,
    response: ServerResponse,
    count: (bytes: number) => void,
  ) => Promise<void>,
): Promise<StreamingServer> {
  const requests: string[] = [];
  const bytesSent: number[] = [];
  const server = createServer((request, response) => {
    requests.push(`${request.method} ${request.url}`);
    const index = bytesSent.push(0) - 1;
    handler(request, response, (bytes) => {
      bytesSent[index] += bytes;
    }).catch(() => response.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    bytesSent,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Writes one chunk, waiting for the socket to drain; false once the client has gone. */
async function writeChunk(response: ServerResponse, chunk: Buffer | string): Promise<boolean> {
  if (response.destroyed || response.writableEnded) return false;
  if (!response.write(chunk)) {
    await new Promise<void>((resolve) => {
      const done = () => {
        response.off('drain', done);
        response.off('close', done);
        resolve();
      };
      response.on('drain', done);
      response.on('close', done);
    });
  }
  return !response.destroyed;
}

/** A Binary of `totalBytes` streamed in 64 KiB chunks, chunked (no Content-Length): the client cannot know its size up front. */
async function streamHugeBinary(
  response: ServerResponse,
  totalBytes: number,
  count: (bytes: number) => void,
) {
  response.writeHead(200, { 'content-type': 'application/fhir+json' });
  const opening = '{"resourceType":"Binary","id":"huge","contentType":"text/plain","data":"';
  count(opening.length);
  await writeChunk(response, opening);
  const chunk = Buffer.alloc(64 * 1024, 'QUFB'); // base64 of "AAA", repeated
  for (let sent = 0; sent < totalBytes; sent += chunk.length) {
    if (!(await writeChunk(response, chunk))) return;
    count(chunk.length);
  }
  response.end('"}');
}

const servers: StreamingServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close()));
});

async function streaming(handler: Parameters<typeof startStreamingServer>[0]) {
  const server = await startStreamingServer(handler);
  servers.push(server);
  return server;
}

function cappedClient(server: StreamingServer, maxResponseBytes = megabyte) {
  return new FhirClient({
    baseUrl: `${server.url}/fhir`,
    maxResponseBytes,
    maxAttempts: 4,
    timeoutMs: 10_000,
    sleep: async () => {},
  });
}

function expectTooLarge(error: unknown) {
  expect(error).toBeInstanceOf(OperationOutcomeError);
  const outcomeError = error as OperationOutcomeError;
  expect(outcomeError.outcome.issue[0].code).toBe('too-long');
  expect(outcomeError.isRetryable).toBe(false);
}

describe('the FHIR client bounds what the server sends back', () => {
  it('aborts a 60 MB chunked Binary at the cap, reads it once, and never holds more than the cap', async () => {
    const fitting = Buffer.from('x'.repeat(600 * 1024)).toString('base64');
    const server = await streaming(async (request, response, count) => {
      if (request.url?.endsWith('/huge')) return streamHugeBinary(response, 60 * megabyte, count);
      // Under the cap, chunked or with a length: read as usual.
      const body = JSON.stringify({ resourceType: 'Binary', contentType: 'text/plain', data: fitting });
      if (request.url?.endsWith('/chunked')) {
        response.writeHead(200, { 'content-type': 'application/fhir+json' });
        await writeChunk(response, body.slice(0, 1000));
        response.end(body.slice(1000));
      } else {
        response.writeHead(200, {
          'content-type': 'application/fhir+json',
          'content-length': String(Buffer.byteLength(body)),
        });
        response.end(body);
      }
    });
    const client = cappedClient(server);
    const heapBefore = process.memoryUsage().heapUsed;
    const error = await client.get<Binary>('Binary/huge').catch((caught: unknown) => caught);
    const heapAfter = process.memoryUsage().heapUsed;
    expectTooLarge(error);
    expect(error).toBeInstanceOf(ResponseTooLargeError);
    // Not retried: a refetch would bring the same bytes.
    expect(server.requests).toEqual(['GET /fhir/Binary/huge']);
    // The client stopped reading and dropped the connection: the server could not push the rest
    // (what it did send sits in socket buffers, a few MB at most).
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(server.bytesSent[0]).toBeLessThan(16 * megabyte);
    expect(heapAfter - heapBefore).toBeLessThan(40 * megabyte);

    // The cap refuses only what is over it.
    for (const path of ['Binary/whole', 'Binary/chunked']) {
      const binary = await client.get<Binary>(path);
      expect(binary.data).toHaveLength(fitting.length);
    }
  });

  it('refuses a response whose Content-Length is over the cap before reading its body', async () => {
    let bodyWritten = false;
    const server = await streaming(async (_request, response) => {
      response.writeHead(200, {
        'content-type': 'application/fhir+json',
        'content-length': String(500 * megabyte),
      });
      await writeChunk(response, '{"resourceType":"Binary","data":"');
      bodyWritten = true;
      // ...and then nothing: a client that waited for the body would wait until its timeout.
    });
    const client = new FhirClient({
      baseUrl: `${server.url}/fhir`,
      maxResponseBytes: megabyte,
      timeoutMs: 5_000,
      sleep: async () => {},
    });
    const started = Date.now();
    const error = await client.read('Binary', 'declared-huge').catch((caught: unknown) => caught);
    expectTooLarge(error);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(server.requests).toHaveLength(1);
    expect(bodyWritten).toBe(true);
  });

  it('counts the decoded bytes: a small gzip body that inflates past the cap is refused', async () => {
    const inflated = JSON.stringify({
      resourceType: 'Binary',
      contentType: 'text/plain',
      data: 'A'.repeat(8 * megabyte),
    });
    const compressed = gzipSync(inflated);
    expect(compressed.length).toBeLessThan(megabyte);
    const server = await streaming(async (_request, response) => {
      response.writeHead(200, {
        'content-type': 'application/fhir+json',
        'content-encoding': 'gzip',
        'content-length': String(compressed.length),
      });
      response.end(compressed);
    });
    const error = await cappedClient(server)
      .get('Binary/bomb')
      .catch((caught: unknown) => caught);
    expectTooLarge(error);
    expect(server.requests).toHaveLength(1);
  });

  it('refuses an over-cap error body as well, without retrying the 503 it came with', async () => {
    const server = await streaming((_request, response, count) => {
      response.statusCode = 503;
      return streamHugeBinary(response, 8 * megabyte, count);
    });
    const error = await cappedClient(server)
      .read('Patient', 'p1')
      .catch((caught: unknown) => caught);
    expectTooLarge(error);
    expect(server.requests).toHaveLength(1);
  });
});

describe('note text is capped per note', () => {
  it('cuts a long note at the cap with a visible marker', async () => {
    const long = `${'Stable. '.repeat(200)}Last sentence that must not survive.`;
    const note: DocumentReference = {
      resourceType: 'DocumentReference',
      id: 'long-note',
      status: 'current',
      subject: { reference: 'Patient/p1' },
      content: [{ attachment: { contentType: 'text/plain', data: Buffer.from(long).toString('base64') } }],
    };
    const client = new FhirClient({ baseUrl: 'http://127.0.0.1:9/fhir' });
    const text = (await readNoteText(client, note, 500)) as string;
    expect(text.startsWith(long.slice(0, 500))).toBe(true);
    expect(text.endsWith(truncationMarker(500))).toBe(true);
    expect(text).not.toContain('must not survive');
    expect(truncationMarker(500)).toBe('[... note truncated at 500 characters]');
  });

  it('never splits a character made of two UTF-16 units', () => {
    const text = `${'a'.repeat(9)}😀 and more`;
    const capped = capNoteText(text, 10);
    expect(capped.startsWith('a'.repeat(9))).toBe(true);
    expect(capped).not.toMatch(/[\ud800-\udbff](?![\udc00-\udfff])/);
  });
});

describe('a note whose Binary is over the cap is left out, and the record says so', () => {
  let server: FhirTestServer;
  let chart: SeededChart;
  let hugeNote: DocumentReference;
  let hugeBinaryId: string;

  beforeAll(async () => {
    server = await startFhirTestServer({ batch: true });
    chart = await seedChart(server.repository);
    const binary = await create<Binary>(server.repository, {
      resourceType: 'Binary',
      contentType: 'text/plain',
      data: Buffer.from('Huge scanned note. '.repeat(100_000)).toString('base64'),
    });
    hugeBinaryId = binary.id as string;
    hugeNote = await create<DocumentReference>(server.repository, {
      resourceType: 'DocumentReference',
      status: 'current',
      subject: { reference: `Patient/${chart.patient.id}` },
      date: '2026-10-20T10:00:00Z',
      type: { text: 'Scanned outside records' },
      content: [{ attachment: { contentType: 'text/plain', url: `Binary/${binary.id}` } }],
    });
  });
  afterAll(() => server.close());

  for (const batch of [true, false]) {
    it(`keeps every other note and lists the omission (${batch ? 'batch' : 'separate reads'})`, async () => {
      server.setBatch(batch);
      server.requests.length = 0;
      const warnings: { fields: Record<string, unknown>; message: string }[] = [];
      const client = new FhirClient({ baseUrl: server.baseUrl, maxResponseBytes: 512 * 1024 });
      const record = await retrievePatientRecord(client, chart.encounter as Encounter, {
        draftIdentifierSystem: 'urn:ehr-draft-agent:draft',
        logger: { warn: (fields, message) => warnings.push({ fields, message }) },
      });
      expect(record.notes.map((note) => note.id).sort()).toEqual(
        [chart.latinNote.id, chart.binaryNote.id].sort(),
      );
      expect(record.omitted).toEqual([
        { reference: `DocumentReference/${hugeNote.id}`, reason: 'too-large' },
      ]);
      // Counts and ids only in the log line.
      expect(warnings).toEqual([
        {
          fields: { encounterId: chart.encounter.id, omittedNotes: 1, reason: 'too-large' },
          message: 'history-notes-omitted',
        },
      ]);
      // The huge Binary was asked for on its own once (in batch mode, after a batch answer over the cap).
      const hugeReads = server.requests.filter((request) => request.url === `Binary/${hugeBinaryId}`);
      expect(hugeReads).toHaveLength(1);
    });
  }
});

describe('the pipeline on the sandbox: the draft goes on without the over-cap note', () => {
  it('writes one draft that does not cite the note it could not read, fetching that note once', async () => {
    const { service, fhir } = await startSandboxService({
      EHR_AGENT_FHIR__MAX_RESPONSE_BYTES: String(megabyte),
      EHR_AGENT_FHIR__MAX_ATTEMPTS: '4',
    });
    try {
      const sandbox = service.sandbox!;
      const hugeData = Buffer.from(
        `Assessment and plan: start the huge-note regimen.\n${'Scanned page of outside records. '.repeat(60_000)}`,
      ).toString('base64');
      const hugeBinary: Binary = {
        resourceType: 'Binary',
        id: 'huge-note-binary',
        contentType: 'text/plain',
        data: hugeData,
      };
      const encounter = finishedEncounter('sbx-0001', 'caps-visit-1');
      const hugeNote: DocumentReference = {
        resourceType: 'DocumentReference',
        id: 'huge-note',
        status: 'current',
        subject: { reference: 'Patient/sbx-0001' },
        // Written during the visit: a note dated after its end (a clock tick later) would be cut from its record.
        date: encounter.period?.start,
        type: { text: 'Progress note' },
        content: [{ attachment: { contentType: 'text/plain', url: 'Binary/huge-note-binary' } }],
      };
      await sandbox.seed([hugeBinary, hugeNote, encounter]);
      // Serve the Binary through a counting route (it is also in the repository, so a batch of notes finds it).
      let hugeReads = 0;
      sandbox.addRoute('GET', 'Binary/huge-note-binary', () => {
        hugeReads++;
        return {
          status: 200,
          headers: { 'content-type': 'application/fhir+json; charset=utf-8' },
          body: hugeBinary as never,
        };
      });

      const response = await postNotification(
        service,
        idOnlyNotification(service.fhirBaseUrl, encounter.id!, 1),
      );
      expect(response.status).toBe(200);
      await waitForIdleQueue(service);

      const drafts = await draftsFor(fhir, encounter.id!);
      expect(drafts).toHaveLength(1);
      expect(drafts[0].docStatus).toBe('preliminary');
      const text = Buffer.from(drafts[0].content[0].attachment.data!, 'base64').toString('utf8');
      // Not cited, but the reviewer is told which note was not read.
      expect(text).not.toContain('[DocumentReference/huge-note]');
      expect(text).toMatch(
        /_Not read: 1 note was larger than the service's size limit .*\(DocumentReference\/huge-note\)\._/,
      );
      expect(text).not.toContain('huge-note regimen');
      expect(hugeReads).toBe(1);
      expect((await service.queue.counts()).failed).toBe(0);
    } finally {
      await service.close();
    }
  });
});
