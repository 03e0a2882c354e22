import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { suitesMayRun } from './prerequisites.ts';

/**
 * A PostgreSQL database of the test's own on the machine's server (127.0.0.1:5432, trust auth as
 * postgres), created and dropped with psql. `postgresAvailable` is false where no server answers, so
 * suites skip, except under CI, where they run and fail.
 */
const host = process.env.PGHOST ?? '127.0.0.1';
const port = process.env.PGPORT ?? '5432';
const user = process.env.PGUSER ?? 'postgres';

function psql(sql: string): void {
  execFileSync('psql', ['-h', host, '-p', port, '-U', user, '-d', 'postgres', '-qtAc', sql], {
    stdio: ['ignore', 'ignore', 'pipe'],
    timeout: 20_000,
  });
}

function answers(): boolean {
  try {
    psql('select 1');
    return true;
  } catch {
    return false;
  }
}

export const postgresAvailable: boolean = suitesMayRun(
  `PostgreSQL at ${host}:${port} as ${user}`,
  answers(),
  {
    skipped: 'pg-boss suites are skipped',
  },
);

export function createTestDatabase(prefix = 'ehr_agent_test'): { url: string; drop(): void } {
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
  psql(`create database ${name}`);
  return {
    url: `postgres://${user}@${host}:${port}/${name}`,
    drop() {
      psql(`drop database if exists ${name} with (force)`);
    },
  };
}
