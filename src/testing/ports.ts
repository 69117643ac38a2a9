// A free TCP port on loopback, for the servers tests start (PostgreSQL, Ceph, coffer server).

import { createServer } from 'node:net';

/** A port the system just handed out on 127.0.0.1 and released again. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}
