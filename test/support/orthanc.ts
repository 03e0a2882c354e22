import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { suitesMayRun } from './prerequisites.ts';

/**
 * A real PACS for the imaging suites: Debian's Orthanc with its DICOMweb plugin, started like the
 * PostgreSQL of the queue suites, on free ports, with its own temporary storage and configuration.
 * DICOM files are made by the tests from synthetic JPEGs with dcmtk's img2dcm and stored over
 * Orthanc's REST API. Missing (no `orthanc`, `orthanc-dicomweb` or `dcmtk`): the suites skip, except
 * under CI, where they run and fail.
 */
const orthancBinary = '/usr/sbin/Orthanc';
const dicomWebPlugin = '/usr/share/orthanc/plugins/libOrthancDicomWeb.so';

function hasImg2dcm(): boolean {
  try {
    execFileSync('img2dcm', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export const orthancAvailable: boolean = suitesMayRun(
  'Orthanc with its DICOMweb plugin and dcmtk (apt-get install orthanc orthanc-dicomweb dcmtk)',
  existsSync(orthancBinary) && existsSync(dicomWebPlugin) && hasImg2dcm(),
  { skipped: 'the PACS suites are skipped' },
);

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

export interface OrthancServer {
  /** e.g. http://127.0.0.1:41234 */
  url: string;
  /** The DICOMweb root: `<url>/dicom-web`. */
  dicomWebUrl: string;
  /** Stores a DICOM file (Orthanc's REST API); returns Orthanc's instance id. */
  store(dicom: Buffer): Promise<string>;
  /** Stops the process and deletes its storage. */
  stop(): Promise<void>;
  /** Stops the process only (a PACS that went down); stop() still cleans up. */
  kill(): Promise<void>;
}

export async function startOrthanc(): Promise<OrthancServer> {
  const directory = mkdtempSync(join(tmpdir(), 'orthanc-test-'));
  const httpPort = await freePort();
  const configuration = {
    Name: 'TestPACS',
    StorageDirectory: join(directory, 'storage'),
    IndexDirectory: join(directory, 'storage'),
    HttpPort: httpPort,
    RemoteAccessAllowed: false,
    AuthenticationEnabled: false,
    DicomServerEnabled: false,
    HttpServerEnabled: true,
    Plugins: [dicomWebPlugin],
    DicomWeb: { Enable: true, Root: '/dicom-web/', EnableWado: false },
    ConcurrentJobs: 1,
    HttpThreadsCount: 4,
  };
  const configurationFile = join(directory, 'orthanc.json');
  writeFileSync(configurationFile, JSON.stringify(configuration));
  const child: ChildProcess = spawn(orthancBinary, [configurationFile], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let errorOutput = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    errorOutput = (errorOutput + chunk.toString('utf8')).slice(-4000);
  });
  const url = `http://127.0.0.1:${httpPort}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`Orthanc exited (${child.exitCode}): ${errorOutput}`);
    try {
      const answer = await fetch(`${url}/system`, { signal: AbortSignal.timeout(1000) });
      if (answer.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`Orthanc did not answer within 30 s: ${errorOutput}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const kill = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
  };
  return {
    url,
    dicomWebUrl: `${url}/dicom-web`,
    async store(dicom) {
      const answer = await fetch(`${url}/instances`, {
        method: 'POST',
        body: new Uint8Array(dicom),
        headers: { 'content-type': 'application/dicom' },
      });
      if (!answer.ok)
        throw new Error(`Orthanc refused the instance: ${answer.status} ${await answer.text()}`);
      return ((await answer.json()) as { ID: string }).ID;
    },
    kill,
    async stop() {
      await kill();
      rmSync(directory, { recursive: true, force: true });
    },
  };
}

export interface DicomIdentifiers {
  patientId: string;
  studyInstanceUid: string;
  seriesInstanceUid: string;
  sopInstanceUid: string;
  modality?: string;
  studyDate?: string;
}

/**
 * A DICOM Secondary Capture made from a JPEG with dcmtk's img2dcm, with the given identifiers.
 * `withoutPixelData` then strips the pixels (dcmodify), as a structured report or a broken object has none.
 */
export function dicomFromJpeg(jpeg: Buffer, identifiers: DicomIdentifiers, withoutPixelData = false): Buffer {
  const directory = mkdtempSync(join(tmpdir(), 'img2dcm-'));
  try {
    const input = join(directory, 'image.jpg');
    const output = join(directory, 'image.dcm');
    writeFileSync(input, jpeg);
    const keys = [
      `PatientID=${identifiers.patientId}`,
      `StudyInstanceUID=${identifiers.studyInstanceUid}`,
      `SeriesInstanceUID=${identifiers.seriesInstanceUid}`,
      `SOPInstanceUID=${identifiers.sopInstanceUid}`,
      `Modality=${identifiers.modality ?? 'OT'}`,
      `StudyDate=${identifiers.studyDate ?? '20240101'}`,
    ].flatMap((key) => ['-k', key]);
    execFileSync('img2dcm', ['-q', ...keys, input, output], { stdio: ['ignore', 'ignore', 'pipe'] });
    if (withoutPixelData) {
      execFileSync('dcmodify', ['-q', '-nb', '-ea', '(7fe0,0010)', output], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
    }
    return readFileSync(output);
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
}
