// The agent's end of a data connection to a storage node (wire.ts): requests with ids, replies
// matched to them, and the connection's byte counts (what crossed the network).

import type { Duplex } from 'node:stream';
import { CofferError } from '../core/errors.ts';
import { FrameReader, T, errorOf, frame, type Frame } from './wire.ts';

export class NodeClient {
  private readonly socket: Duplex;
  private readonly reader: FrameReader;
  private readonly waiting = new Map<number, { resolve: (f: Frame) => void; reject: (e: CofferError) => void }>();
  private nextId = 1;
  private ended: CofferError | undefined;
  /** Bytes written to and read from the connection (frames, before TLS). */
  bytesSent = 0;
  bytesReceived = 0;

  constructor(socket: Duplex) {
    this.socket = socket;
    this.reader = new FrameReader((f) => this.onFrame(f), (e) => this.close(e));
    socket.on('data', (b: Buffer) => {
      this.bytesReceived += b.length;
      this.reader.push(b);
    });
    socket.once('end', () => this.close(new CofferError('STORAGE_UNAVAILABLE', 'The storage node closed the connection')));
    socket.once('close', () => this.close(new CofferError('STORAGE_UNAVAILABLE', 'The connection to the storage node closed')));
    socket.on('error', (e) => this.close(new CofferError('STORAGE_UNAVAILABLE', `The connection to the storage node failed: ${e.message}`)));
  }

  /** Why the connection ended, if it did. */
  get error(): CofferError | undefined {
    return this.ended;
  }

  /**
   * Sends a request and resolves with its reply; an ERR reply rejects with its error. Resolves
   * once written into the socket's buffer: callers that send a lot wait for `drained()`.
   */
  request(type: number, payload: Uint8Array | readonly Uint8Array[]): Promise<Frame> {
    if (this.ended) return Promise.reject(this.ended);
    const id = this.nextId++;
    const bytes = frame(type, id, payload);
    return new Promise<Frame>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.bytesSent += bytes.length;
      this.socket.write(bytes);
    });
  }

  /** Sends a message that has no reply. */
  send(type: number, payload: Uint8Array): void {
    if (this.ended) return;
    const bytes = frame(type, 0, payload);
    this.bytesSent += bytes.length;
    this.socket.write(bytes);
  }

  /** Resolves when the socket's write buffer has drained (backpressure). */
  drained(): Promise<void> {
    if (this.ended) return Promise.reject(this.ended);
    if (!this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onDrain = () => {
        this.socket.off('close', onClose);
        resolve();
      };
      const onClose = () => {
        this.socket.off('drain', onDrain);
        reject(this.ended ?? new CofferError('STORAGE_UNAVAILABLE', 'The connection to the storage node closed'));
      };
      this.socket.once('drain', onDrain);
      this.socket.once('close', onClose);
    });
  }

  close(why?: CofferError): void {
    if (this.ended) return;
    this.ended = why ?? new CofferError('CANCELLED', 'The connection to the storage node was closed');
    this.reader.stop();
    for (const w of this.waiting.values()) w.reject(this.ended);
    this.waiting.clear();
    this.socket.destroy();
  }

  private onFrame(f: Frame): void {
    const w = this.waiting.get(f.id);
    if (!w) return this.close(new CofferError('PROTOCOL', `The storage node answered request ${f.id}, which was not asked`));
    this.waiting.delete(f.id);
    if (f.type === T.ERR) w.reject(errorOf(f.payload));
    else w.resolve(f);
  }
}
