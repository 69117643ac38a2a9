// Frozen on-disk constants of the Coffer engine format, in one place so that a change to any of
// them is a visible, reviewable event. docs/format.md describes how they are used.
//
// DO NOT MODIFY: every value here is part of the on-disk format. Changing one makes existing
// repositories unreadable. A new format needs a new version number and code that reads both.

export type BlobType = 'data' | 'tree';

/** Blob type codes as stored in pack trailers and blob AAD. DO NOT MODIFY. */
export const BLOB_TYPE_CODE: Record<BlobType, number> = { data: 0, tree: 1 };

/** Reverse lookup of BLOB_TYPE_CODE; index = code. */
export const BLOB_TYPE_BY_CODE: readonly BlobType[] = ['data', 'tree'];

export function blobTypeFromCode(code: number): BlobType | undefined {
  return BLOB_TYPE_BY_CODE[code];
}

export function isBlobType(v: unknown): v is BlobType {
  return v === 'data' || v === 'tree';
}

const ascii = (s: string): Buffer => Buffer.from(s, 'latin1');

/** First 8 bytes of every pack file. DO NOT MODIFY. */
export const PACK_MAGIC: Buffer = ascii('CFRPACK\n');
/** Last 8 bytes of every pack file. DO NOT MODIFY. */
export const PACK_END_MAGIC: Buffer = ascii('CFRPEND\n');
/** Pack format version written and read by this code. */
export const PACK_VERSION = 1;

/** First 8 bytes of every sealed object (config, index, snapshot, session, gc). DO NOT MODIFY. */
export const OBJECT_MAGIC: Buffer = ascii('CFROBJ\n\0');
/** Envelope format version written and read by this code. */
export const OBJECT_VERSION = 1;

/** Prefix of the additional authenticated data of every blob. DO NOT MODIFY. */
export const BLOB_AAD_MAGIC: Buffer = ascii('CFRBLOB\0');
/** Blob encoding version, bound into the blob AAD. */
export const BLOB_VERSION = 1;

/** Prefix of the additional authenticated data of every pack trailer. DO NOT MODIFY. */
export const TRAILER_AAD_MAGIC: Buffer = ascii('CFRTRLR\0');

/** Object kinds and their codes in the envelope header. DO NOT MODIFY (new kinds get new codes). */
export type ObjectKind = 'config' | 'index' | 'snapshot' | 'session' | 'gc' | 'damage';
export const OBJECT_KIND_CODE: Record<ObjectKind, number> = { config: 1, index: 2, snapshot: 3, session: 4, gc: 5, damage: 6 };

/** HKDF info labels (UTF-8). DO NOT MODIFY. */
export const LABEL_ENCRYPTION = 'coffer v1 encryption';
export const LABEL_CHUNK_ID = 'coffer v1 chunk id';
export const LABEL_GEAR = 'coffer v1 gear';
export const LABEL_PACK = 'coffer v1 pack';
export const LABEL_OBJECT_PREFIX = 'coffer v1 object ';

/** Flag bit in blob AAD, pack trailer entries and envelope headers: the payload is zstd. */
export const FLAG_COMPRESSED = 0x01;

/** Sizes fixed by the format. */
export const KEY_SIZE = 32;
export const ID_SIZE = 32;
export const SALT_SIZE = 32;
export const NONCE_SIZE = 12;
export const TAG_SIZE = 16;
