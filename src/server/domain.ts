// The server's deduplication domain (docs/format.md, "Deduplication domains"): every repository
// the server creates for a storage unit is initialised with one master key, kept in the server's
// keystore, so that a clone between two of its units finds blobs by their ids and copies packs as
// they are (src/jobs/clone-domain.ts) instead of decrypting, re-chunking and re-encrypting
// everything. Repositories that existed before (a unit applied with passwordFrom on a location
// that holds one) keep their own keys: clones to and from them re-encrypt (src/jobs/clone.ts).
//
// Trade-off: whoever holds the domain's key reads every unit of the server and can tell which
// chunks two units share. The server holds every unit's password in the same keystore anyway, so
// sharing the key gives it nothing it did not have; a unit's own passphrase, however, now opens
// the other units of the domain too.

import { randomBytes } from 'node:crypto';
import { CofferError } from '../core/errors.ts';

/** The keystore name of the domain's master key (base64 of 32 bytes). */
export const DOMAIN_MASTER_REF = 'storage-domain/master';

/** What the domain needs of the keystore (src/server/keystore.ts). */
export interface DomainKeystore {
  has(ref: string): boolean;
  get(ref: string): string;
  put(ref: string, secret: string): Promise<void>;
}

const creating = new WeakMap<DomainKeystore, Promise<string>>();

/**
 * The domain's master key, base64: read from the keystore, or made (32 random bytes) and stored
 * there the first time a repository is created. A stored value that is not 32 bytes of base64 is
 * CORRUPT: nothing is created over it.
 */
export function domainMasterKey(store: DomainKeystore): Promise<string> {
  const pending = creating.get(store);
  if (pending) return pending;
  const p = (async () => {
    if (store.has(DOMAIN_MASTER_REF)) return checked(store.get(DOMAIN_MASTER_REF));
    const key = randomBytes(32).toString('base64');
    await store.put(DOMAIN_MASTER_REF, key);
    return key;
  })();
  creating.set(store, p);
  // Only the creation is shared: a failed one is tried again by the next caller.
  p.then(() => creating.delete(store), () => creating.delete(store));
  return p;
}

function checked(value: string): string {
  const bytes = Buffer.from(value, 'base64');
  if (bytes.length !== 32 || bytes.toString('base64') !== value) {
    throw new CofferError('CORRUPT', `Cannot use the keystore entry ${DOMAIN_MASTER_REF}: it is not the base64 of a 32-byte key`, { hint: 'Restore the keystore from a backup; new storage units cannot be created until then.' });
  }
  return value;
}
