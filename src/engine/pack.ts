// Pack files: many encrypted blobs in one immutable object, with an encrypted trailer listing
// them all, so that the index can always be rebuilt from the packs alone.
//
// Layout (docs/format.md has the full description):
//   header  magic(8) version(1) reserved(3) = 0, salt(32)                          44 bytes
//   blobs   stored blob 0 | stored blob 1 | ...   (each ciphertext || tag)
//   trailer AES-256-GCM(packKey, nonce = 12 × 0xFF, AAD) of count(u32) + count × entry(50)
//   footer  trailer length(u32) end magic(8)                                       12 bytes
// All integers are little-endian. packKey = HKDF-SHA256(encryption, salt, "coffer v1 pack").
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { CofferError } from '../core/errors.ts';
import { encodeBlob, MAX_NONCE_INDEX, type EncodedBlob } from './blob.ts';
import {
  BLOB_TYPE_CODE, FLAG_COMPRESSED, ID_SIZE, LABEL_PACK, NONCE_SIZE, PACK_END_MAGIC, PACK_MAGIC, PACK_VERSION,
  SALT_SIZE, TAG_SIZE, TRAILER_AAD_MAGIC, blobTypeFromCode, type BlobType,
} from './format.ts';
import { contentHash } from './hash.ts';
import { hkdf32, type RepoKeys } from './keys.ts';

export interface PackEntry {
  type: BlobType;
  id: Buffer;
  /** Offset of the stored blob in the pack file. */
  offset: number;
  /** Stored length: ciphertext + 16-byte tag. */
  length: number;
  /** Plaintext length after decompression. */
  rawLength: number;
  compressed: boolean;
  nonceIndex: number;
}

export const PACK_HEADER_SIZE = 8 + 1 + 3 + SALT_SIZE;
export const PACK_FOOTER_SIZE = 4 + 8;
export const PACK_ENTRY_SIZE = 1 + 1 + ID_SIZE + 4 + 4 + 4 + 4;
/** Smallest trailer: count + tag. */
const MIN_TRAILER = 4 + TAG_SIZE;
/** Smallest possible pack: header, empty trailer, footer. */
export const MIN_PACK_SIZE = PACK_HEADER_SIZE + MIN_TRAILER + PACK_FOOTER_SIZE;
/** Offsets and lengths are u32: a pack must stay below 4 GiB. */
export const MAX_PACK_SIZE = 0xffffffff;

const TRAILER_NONCE = Buffer.alloc(NONCE_SIZE, 0xff);

function corrupt(what: string, why: string): CofferError {
  return new CofferError('CORRUPT', `Cannot read pack ${what}: ${why}`, {
    hint: "The pack file is damaged; run 'coffer repo check' and restore it from another copy of the repository.",
  });
}

export function newPackHeader(): { header: Buffer; salt: Buffer } {
  const salt = randomBytes(SALT_SIZE);
  return { header: makeHeader(salt), salt };
}

function makeHeader(salt: Uint8Array): Buffer {
  const header = Buffer.alloc(PACK_HEADER_SIZE);
  PACK_MAGIC.copy(header, 0);
  header[8] = PACK_VERSION;
  header.set(salt, 12);
  return header;
}

/** Checks a pack header and derives the pack's subkey from its salt. */
export function packKeyFromHeader(keys: RepoKeys, header: Uint8Array): Buffer {
  if (header.length < PACK_HEADER_SIZE) throw corrupt('header', `only ${header.length} bytes`);
  if (!PACK_MAGIC.equals(header.subarray(0, 8))) throw corrupt('header', 'not a Coffer pack (bad magic)');
  const version = header[8]!;
  if (version !== PACK_VERSION) {
    if (version > PACK_VERSION) {
      throw new CofferError('UNSUPPORTED', `Cannot read pack format version ${version}: this Coffer reads version ${PACK_VERSION}`, {
        hint: 'The pack was written by a newer Coffer; use a newer release.',
      });
    }
    throw corrupt('header', `bad version ${version}`);
  }
  // Reserved bytes must be zero, so that every header byte is checked.
  if (header[9] !== 0 || header[10] !== 0 || header[11] !== 0) throw corrupt('header', 'reserved bytes are not zero');
  return hkdf32(keys.encryption, header.subarray(12, PACK_HEADER_SIZE), LABEL_PACK);
}

function trailerAad(count: number): Buffer {
  const aad = Buffer.alloc(8 + 4 + 4);
  TRAILER_AAD_MAGIC.copy(aad, 0);
  aad[8] = PACK_VERSION;
  aad.writeUInt32LE(count, 12);
  return aad;
}

/** Where a PackWriter gets its pack buffers: take(n) gives one of at least n bytes. */
export interface PackMemory {
  take(size: number): Buffer;
  give(buffer: ArrayBuffer): void;
}

/** Assembles one pack in memory. Blobs may be encoded elsewhere with nonces from reserveNonce(). */
export class PackWriter {
  readonly packKey: Buffer;
  private readonly keys: RepoKeys;
  private readonly header: Buffer;
  private readonly parts: Buffer[] = [];
  private readonly entries: PackEntry[] = [];
  private readonly used = new Set<number>();
  private nextNonce = 0;
  private bytes: number;
  private finished = false;
  /** With `memory`: the pack so far, copied in as blobs are appended (`parts` stays empty). */
  private buf: Buffer | undefined;
  private readonly memory: PackMemory | undefined;

  /**
   * `memory`: appended blobs are copied into a pack buffer from it at once (the caller may then
   * reuse the blobs' buffers), and finish() returns that buffer's bytes; without, the blobs are
   * kept as given and finish() copies them into a new buffer.
   */
  constructor(keys: RepoKeys, options: { salt?: Uint8Array; memory?: PackMemory } = {}) {
    this.keys = keys;
    this.memory = options.memory;
    // `salt` is for golden test vectors only: a pack salt MUST be random.
    if (options.salt !== undefined && options.salt.length !== SALT_SIZE) throw new CofferError('INTERNAL', 'Cannot start a pack: bad salt');
    this.header = options.salt ? makeHeader(options.salt) : newPackHeader().header;
    this.packKey = packKeyFromHeader(keys, this.header);
    this.bytes = this.header.length;
    if (this.memory) {
      this.buf = this.memory.take(this.bytes);
      this.header.copy(this.buf, 0);
    } else this.parts.push(this.header);
  }

  /** Room for `more` bytes in the pack buffer (memory mode): a bigger one when it is full. */
  private reserve(more: number): void {
    const need = this.bytes + more;
    if (need <= this.buf!.length) return;
    const bigger = this.memory!.take(Math.max(need, Math.ceil(this.buf!.length * 1.5)));
    this.buf!.copy(bigger, 0, 0, this.bytes);
    this.memory!.give(this.buf!.buffer as ArrayBuffer);
    this.buf = bigger;
  }

  /** A nonce index never handed out before for this pack: 0, 1, 2, ... */
  reserveNonce(): number {
    this.checkOpen('reserve a nonce');
    if (this.nextNonce >= MAX_NONCE_INDEX) throw new CofferError('INTERNAL', 'Cannot reserve a nonce: the pack has used them all');
    return this.nextNonce++;
  }

  /** Adds a blob encoded with this.packKey and `nonceIndex` (from reserveNonce(), used once). */
  append(type: BlobType, id: Uint8Array, blob: EncodedBlob, nonceIndex: number): PackEntry {
    this.checkOpen('append a blob');
    if (!Number.isSafeInteger(nonceIndex) || nonceIndex < 0 || nonceIndex >= this.nextNonce || this.used.has(nonceIndex)) {
      throw new CofferError('INTERNAL', `Cannot append a blob: nonce index ${String(nonceIndex)} was not reserved or is already used`);
    }
    if (id.length !== ID_SIZE || BLOB_TYPE_CODE[type] === undefined) throw new CofferError('INTERNAL', 'Cannot append a blob: bad type or id');
    const length = blob.stored.length;
    // The same consistency rules decodePackTrailer() enforces: never write what cannot be read.
    if (length < TAG_SIZE || (blob.compressed ? length - TAG_SIZE >= blob.rawLength : length - TAG_SIZE !== blob.rawLength)) {
      throw new CofferError('INTERNAL', `Cannot append a blob: stored length ${length} does not fit raw length ${blob.rawLength}`);
    }
    if (this.bytes + length + PACK_FOOTER_SIZE + MIN_TRAILER + (this.entries.length + 1) * PACK_ENTRY_SIZE > MAX_PACK_SIZE) {
      throw new CofferError('INTERNAL', 'Cannot append a blob: the pack would exceed 4 GiB');
    }
    const entry: PackEntry = {
      type,
      id: Buffer.from(id),
      offset: this.bytes,
      length,
      rawLength: blob.rawLength,
      compressed: blob.compressed,
      nonceIndex,
    };
    this.used.add(nonceIndex);
    if (this.buf) {
      this.reserve(length);
      blob.stored.copy(this.buf, this.bytes);
    } else this.parts.push(blob.stored);
    this.entries.push(entry);
    this.bytes += length;
    return entry;
  }

  /** Encodes and appends in one step, on this thread. */
  add(type: BlobType, id: Uint8Array, raw: Uint8Array, level: number): PackEntry {
    const nonce = this.reserveNonce();
    return this.append(type, id, encodeBlob(this.keys, this.packKey, nonce, type, id, raw, level), nonce);
  }

  /** Bytes so far (header and blobs; the trailer and footer come on finish()). */
  get size(): number {
    return this.bytes;
  }

  get count(): number {
    return this.entries.length;
  }

  /** Writes the trailer and footer; the writer cannot be used afterwards. */
  finish(): { bytes: Buffer; id: Buffer; entries: PackEntry[] } {
    this.checkOpen('finish the pack');
    this.finished = true;
    const count = this.entries.length;
    const plain = Buffer.alloc(4 + count * PACK_ENTRY_SIZE);
    plain.writeUInt32LE(count, 0);
    let o = 4;
    for (const e of this.entries) {
      plain[o] = BLOB_TYPE_CODE[e.type];
      plain[o + 1] = e.compressed ? FLAG_COMPRESSED : 0;
      e.id.copy(plain, o + 2);
      plain.writeUInt32LE(e.offset, o + 34);
      plain.writeUInt32LE(e.length, o + 38);
      plain.writeUInt32LE(e.rawLength, o + 42);
      plain.writeUInt32LE(e.nonceIndex, o + 46);
      o += PACK_ENTRY_SIZE;
    }
    const cipher = createCipheriv('aes-256-gcm', this.packKey, TRAILER_NONCE);
    cipher.setAAD(trailerAad(count));
    const ct = Buffer.concat([cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
    const footer = Buffer.alloc(PACK_FOOTER_SIZE);
    footer.writeUInt32LE(ct.length, 0);
    PACK_END_MAGIC.copy(footer, 4);
    let bytes: Buffer;
    if (this.buf) {
      this.reserve(ct.length + footer.length);
      ct.copy(this.buf, this.bytes);
      footer.copy(this.buf, this.bytes + ct.length);
      bytes = this.buf.subarray(0, this.bytes + ct.length + footer.length);
      this.buf = undefined;
    } else {
      this.parts.push(ct, footer);
      bytes = Buffer.concat(this.parts, this.bytes + ct.length + footer.length);
      this.parts.length = 0;
    }
    return { bytes, id: contentHash(bytes), entries: this.entries.slice() };
  }

  private checkOpen(action: string): void {
    if (this.finished) throw new CofferError('INTERNAL', `Cannot ${action}: the pack is already finished`);
  }
}

/** Reads the footer from the last bytes of a pack (`tail`: at least PACK_FOOTER_SIZE of them). */
export function parsePackFooter(tail: Uint8Array, packSize: number): { trailerOffset: number; trailerLength: number } {
  if (!Number.isSafeInteger(packSize) || packSize < MIN_PACK_SIZE) throw corrupt('footer', `a pack of ${String(packSize)} bytes is too small`);
  if (packSize > MAX_PACK_SIZE) throw corrupt('footer', `a pack of ${packSize} bytes is too large`);
  if (tail.length < PACK_FOOTER_SIZE || tail.length > packSize) throw corrupt('footer', `got ${tail.length} bytes of the end`);
  const footer = Buffer.from(tail.buffer, tail.byteOffset + tail.length - PACK_FOOTER_SIZE, PACK_FOOTER_SIZE);
  if (!PACK_END_MAGIC.equals(footer.subarray(4))) throw corrupt('footer', 'bad end magic (truncated or not a pack)');
  const trailerLength = footer.readUInt32LE(0);
  const trailerOffset = packSize - PACK_FOOTER_SIZE - trailerLength;
  if (trailerLength < MIN_TRAILER || trailerOffset < PACK_HEADER_SIZE) throw corrupt('footer', `bad trailer length ${trailerLength}`);
  if ((trailerLength - MIN_TRAILER) % PACK_ENTRY_SIZE !== 0) throw corrupt('footer', `trailer length ${trailerLength} is not a whole number of entries`);
  return { trailerOffset, trailerLength };
}

/**
 * Decrypts and validates a pack trailer. Every entry must lie in the blob area (between header
 * and trailer), in increasing offset order without overlaps, with a valid type and flags, a
 * stored length that fits its raw length, and a nonce used only once.
 */
export function decodePackTrailer(keys: RepoKeys, header: Uint8Array, trailer: Uint8Array, packSize: number): PackEntry[] {
  const packKey = packKeyFromHeader(keys, header);
  if (!Number.isSafeInteger(packSize) || packSize < MIN_PACK_SIZE || packSize > MAX_PACK_SIZE) throw corrupt('trailer', `bad pack size ${String(packSize)}`);
  const trailerOffset = packSize - PACK_FOOTER_SIZE - trailer.length;
  if (trailer.length < MIN_TRAILER || trailerOffset < PACK_HEADER_SIZE || (trailer.length - MIN_TRAILER) % PACK_ENTRY_SIZE !== 0) {
    throw corrupt('trailer', `bad trailer length ${trailer.length}`);
  }
  const count = (trailer.length - MIN_TRAILER) / PACK_ENTRY_SIZE;
  const ctLength = trailer.length - TAG_SIZE;
  const decipher = createDecipheriv('aes-256-gcm', packKey, TRAILER_NONCE);
  decipher.setAAD(trailerAad(count));
  decipher.setAuthTag(trailer.subarray(ctLength));
  let plain: Buffer;
  try {
    plain = Buffer.concat([decipher.update(trailer.subarray(0, ctLength)), decipher.final()]);
  } catch {
    throw corrupt('trailer', 'authentication failed');
  }
  // From here on the trailer is authentic: failures below mean a writer bug, still CORRUPT.
  if (plain.readUInt32LE(0) !== count) throw corrupt('trailer', 'entry count does not match its length');
  const entries: PackEntry[] = new Array(count);
  const nonces = new Set<number>();
  let prevEnd = PACK_HEADER_SIZE;
  for (let i = 0, o = 4; i < count; i++, o += PACK_ENTRY_SIZE) {
    const type = blobTypeFromCode(plain[o]!);
    const flags = plain[o + 1]!;
    if (type === undefined) throw corrupt('trailer', `entry ${i} has unknown blob type ${plain[o]!}`);
    if ((flags & ~FLAG_COMPRESSED) !== 0) throw corrupt('trailer', `entry ${i} has unknown flags ${flags}`);
    const compressed = (flags & FLAG_COMPRESSED) !== 0;
    const offset = plain.readUInt32LE(o + 34);
    const length = plain.readUInt32LE(o + 38);
    const rawLength = plain.readUInt32LE(o + 42);
    const nonceIndex = plain.readUInt32LE(o + 46);
    if (offset < prevEnd || length < TAG_SIZE || offset + length > trailerOffset) {
      throw corrupt('trailer', `entry ${i} (offset ${offset}, length ${length}) is outside the blob area or overlaps another`);
    }
    if (compressed ? length - TAG_SIZE >= rawLength : length - TAG_SIZE !== rawLength) {
      throw corrupt('trailer', `entry ${i} has stored length ${length} that does not fit raw length ${rawLength}`);
    }
    if (nonceIndex >= MAX_NONCE_INDEX || nonces.has(nonceIndex)) throw corrupt('trailer', `entry ${i} reuses nonce ${nonceIndex}`);
    nonces.add(nonceIndex);
    prevEnd = offset + length;
    entries[i] = { type, id: Buffer.from(plain.subarray(o + 2, o + 2 + ID_SIZE)), offset, length, rawLength, compressed, nonceIndex };
  }
  return entries;
}

/** How much of the end of a pack readPackIndex() fetches at once, hoping to get the trailer too. */
const TAIL_READ = 64 * 1024;

/**
 * Reads a pack's blob list with ranged reads: header, then the last bytes (footer, and usually
 * the whole trailer), then the trailer if it was not in them. For repair index and check.
 */
export async function readPackIndex(
  keys: RepoKeys,
  packSize: number,
  readRange: (offset: number, length: number) => Promise<Buffer>,
): Promise<PackEntry[]> {
  if (!Number.isSafeInteger(packSize) || packSize < MIN_PACK_SIZE) throw corrupt('index', `a pack of ${String(packSize)} bytes is too small`);
  if (packSize > MAX_PACK_SIZE) throw corrupt('index', `a pack of ${packSize} bytes is too large`);
  const read = async (offset: number, length: number): Promise<Buffer> => {
    const b = await readRange(offset, length);
    if (b.length !== length) throw corrupt('index', `short read at ${offset}: ${b.length} of ${length} bytes`);
    return b;
  };
  const tailLength = Math.min(packSize - PACK_HEADER_SIZE, TAIL_READ);
  const tailStart = packSize - tailLength;
  const [header, tail] = await Promise.all([read(0, PACK_HEADER_SIZE), read(tailStart, tailLength)]);
  packKeyFromHeader(keys, header); // fail early on a bad header
  const { trailerOffset, trailerLength } = parsePackFooter(tail, packSize);
  const trailer = trailerOffset >= tailStart
    ? tail.subarray(trailerOffset - tailStart, trailerOffset - tailStart + trailerLength)
    : await read(trailerOffset, trailerLength);
  return decodePackTrailer(keys, header, trailer, packSize);
}
