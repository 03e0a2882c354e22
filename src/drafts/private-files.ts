import { chmodSync, closeSync, mkdirSync, openSync, statSync } from 'node:fs';
import path from 'node:path';

/**
 * The data directory holds patient data (queued jobs, held drafts): it is private to the service's
 * user (0700) and its database files are 0600. SQLite creates its -wal and -shm files with the
 * database file's own permissions, so making the file private before SQLite opens it covers them.
 */
export function ensurePrivateDirectory(directory: string): string {
  const resolved = path.resolve(directory);
  mkdirSync(resolved, { recursive: true, mode: 0o700 });
  // mkdir's mode is masked by the umask and ignored for a directory that already exists.
  if ((statSync(resolved).mode & 0o777) !== 0o700) chmodSync(resolved, 0o700);
  return resolved;
}

export function ensurePrivateFile(file: string): string {
  ensurePrivateDirectory(path.dirname(file));
  closeSync(openSync(file, 'a', 0o600));
  if ((statSync(file).mode & 0o777) !== 0o600) chmodSync(file, 0o600);
  return file;
}
