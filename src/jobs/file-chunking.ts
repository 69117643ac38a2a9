// How a backup cuts one file into chunks. Files are cut by content-defined chunking (the
// repository's chunker, about 1 MiB per chunk), which finds the same data again wherever it moves.
// Page-structured files are the exception: databases, VM disks, swap and memory-mapped archives
// consist of fixed-size pages that are rewritten in place, and nothing in them ever moves. A
// rewritten 8 KiB page costs a whole content-defined chunk (1 MiB stored again per page), so a
// database with 1% of its pages rewritten is stored almost whole every day. Such files are cut
// in fixed blocks on their own page grid instead: a rewritten page costs one small block.
//
// A file counts as page-structured when its size is a whole number of 4 KiB pages and at least
// the chunker's minSize (smaller files are one chunk either way). The block size grows with the
// file, so that a file has at most about PAGED_BLOCKS_PER_FILE blocks (the index cost): 128 KiB
// for files up to 512 MiB, doubling with the size up to 1 MiB blocks for files over 2 GiB.
// Smaller blocks store less per rewritten page but compress worse (zstd per block): on the
// benchmark's database files 64 KiB blocks made the full backup 1% larger than 128 KiB ones,
// 16 KiB blocks 3% (README, "Chunk sizes"). docs/format.md ("Page-structured files") has the rule.

import type { ChunkerParams } from '../engine/chunker.ts';

/** A page-structured file's size is a multiple of this. */
export const PAGE_SIZE = 4096;
/** The smallest block of a page-structured file. */
export const PAGED_MIN_BLOCK = 128 * 1024;
/** The largest block of a page-structured file. */
export const PAGED_MAX_BLOCK = 1024 * 1024;
/** About how many blocks a page-structured file is cut into at most (below PAGED_MAX_BLOCK). */
export const PAGED_BLOCKS_PER_FILE = 4096;

/**
 * How files are chunked: 'auto' (the default) cuts page-structured files in fixed blocks and
 * everything else content-defined; 'cdc' cuts every file content-defined.
 */
export type FileChunking = 'auto' | 'cdc';

/** The accepted values of FileChunking, for option parsers. */
export const FILE_CHUNKINGS: readonly FileChunking[] = ['auto', 'cdc'];

/** True when a file of `size` bytes looks page-structured (see the header). */
export function isPageStructured(size: number, chunker: ChunkerParams): boolean {
  return size >= chunker.minSize && size % PAGE_SIZE === 0;
}

/** The fixed block size for a page-structured file of `size` bytes: a power of two from 128 KiB to 1 MiB. */
export function pagedBlockSize(size: number): number {
  let block = PAGED_MIN_BLOCK;
  while (block < PAGED_MAX_BLOCK && block * PAGED_BLOCKS_PER_FILE < size) block *= 2;
  return block;
}

export interface ChunkingChoice {
  /** Back up disk images (BackupOptions.images). */
  images?: boolean;
  imageChunking?: 'fixed' | 'cdc';
  /** The repository's block size for fixed-size image chunks. */
  imageChunkSize: number;
  fileChunking?: FileChunking;
  chunker: ChunkerParams;
}

/**
 * The fixed chunk size to cut a file (or image) of `size` bytes in, or undefined for
 * content-defined chunking. Images follow imageChunking; files follow fileChunking.
 */
export function fixedChunkSize(size: number, c: ChunkingChoice): number | undefined {
  if (c.images) return c.imageChunking === 'fixed' ? c.imageChunkSize : undefined;
  if (c.fileChunking === 'cdc') return undefined;
  return isPageStructured(size, c.chunker) ? pagedBlockSize(size) : undefined;
}
