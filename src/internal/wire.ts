/**
 * Decodes etcd's `WatchResponse` and `RangeResponse` from the wire straight
 * into what a watch and a listing need, in place of etcd3's generic decoding
 * (`@grpc/proto-loader` with `longs: String`), which builds every message
 * twice (a protobuf.js message, then a plain object) and turns each of the
 * eight 64-bit integers of a header and a key-value into a decimal string by
 * `Long` division, only for us to parse most of them back into numbers: a
 * fifth of a subscriber's CPU under churn went there (issue 7,
 * bench/NOTES.md), and most of a listing's decoding.
 *
 * Revisions are numbers (exact below 2^53, which etcd's revisions, one per
 * write, do not reach); the cluster id and lease ids, random 64-bit values,
 * are decimal strings as etcd3 gives them (signed for `int64`, unsigned for
 * `uint64`). Keys and values are views of the message's buffer. Fields the
 * watch does not read are skipped, as are fields this schema does not know
 * (groups included). An event type other than Put and Delete makes the
 * message undecodable: etcd3 took it for a Delete, which would drop an
 * instance on a change this code cannot read.
 * A message that does not parse decodes to {@link Undecodable}, which the
 * caller turns into an error of its own: thrown from a deserializer, gRPC
 * would report it as `INTERNAL`, which etcd3 takes for the member's failure
 * (its clients reset, its circuit breaker counting it, the request retried on
 * every member).
 *
 * The schema (etcd's `rpc.proto` and `kv.proto`, 3.4 and later):
 *
 * ```proto
 * message ResponseHeader { uint64 cluster_id = 1; uint64 member_id = 2; int64 revision = 3; uint64 raft_term = 4; }
 * message WatchResponse {
 *   ResponseHeader header = 1; int64 watch_id = 2; bool created = 3; bool canceled = 4;
 *   int64 compact_revision = 5; string cancel_reason = 6; bool fragment = 7; repeated mvccpb.Event events = 11;
 * }
 * message Event { EventType type = 1; KeyValue kv = 2; KeyValue prev_kv = 3; }  // Put = 0, Delete = 1
 * message KeyValue { bytes key = 1; int64 create_revision = 2; int64 mod_revision = 3; int64 version = 4; bytes value = 5; int64 lease = 6; }
 * message RangeResponse { ResponseHeader header = 1; repeated mvccpb.KeyValue kvs = 2; bool more = 3; int64 count = 4; }
 * ```
 *
 * @internal
 */

/** A key-value: the fields a watch and a listing read. */
export interface WireKeyValue {
  readonly key: Buffer
  readonly value: Buffer
  readonly createRevision: number
  readonly modRevision: number
  /** The lease id as a signed decimal string, `"0"` for none. */
  readonly lease: string
}

/** A watch event. */
export interface WireEvent {
  readonly type: "Put" | "Delete"
  readonly kv: WireKeyValue
}

/** A decoded `WatchResponse`. */
export interface WireWatchResponse {
  /** The header's revision. */
  readonly revision: number
  /** The header's cluster id as an unsigned decimal string, on the message that says the watch is created (else undefined). */
  readonly clusterId: string | undefined
  readonly created: boolean
  readonly canceled: boolean
  readonly compactRevision: number
  readonly cancelReason: string
  readonly events: ReadonlyArray<WireEvent>
}

/** A decoded `RangeResponse`. */
export interface WireRangeResponse {
  /** The header's revision. */
  readonly revision: number
  /** The header's cluster id, as an unsigned decimal string. */
  readonly clusterId: string
  readonly kvs: ReadonlyArray<WireKeyValue>
  readonly more: boolean
  readonly count: number
}

/** A message that did not decode: what was wrong with it. */
export class Undecodable {
  readonly _tag = "Undecodable"
  constructor(readonly message: string) {}
}

/** `decode`, with a message that does not parse turned into an {@link Undecodable} that names it. */
const orUndecodable =
  <A>(name: string, decode: (buf: Buffer) => A) =>
  (buf: Buffer): A | Undecodable => {
    try {
      return decode(buf)
    } catch (error) {
      return new Undecodable(
        `${name} of ${buf.length} bytes did not decode: ${error instanceof Error ? error.message : String(error)}`
      )
    }
  }

const emptyBuffer: Buffer = Buffer.alloc(0)
const twoTo32 = 4294967296

/** A cursor over one message (or a nested one: `end` is where it stops). */
class Reader {
  /** The low and high 32 bits of the last 64-bit varint read by {@link varint64}. */
  lo = 0
  hi = 0
  constructor(
    readonly buf: Buffer,
    public pos: number,
    readonly end: number
  ) {}

  /** A varint of up to 32 bits (tags, lengths, bools, enums); higher bits are read and dropped. */
  varint32(): number {
    const buf = this.buf
    let result = 0
    let shift = 0
    for (;;) {
      if (this.pos >= this.end) throw new RangeError("truncated varint")
      const byte = buf[this.pos++]!
      if (shift < 32) result |= (byte & 0x7f) << shift
      if (byte < 0x80) return result >>> 0
      shift += 7
      if (shift >= 70) throw new RangeError("varint too long")
    }
  }

  /** A varint of up to 64 bits, into {@link lo} and {@link hi}. */
  varint64(): void {
    const buf = this.buf
    let lo = 0
    let hi = 0
    let shift = 0
    for (;;) {
      if (this.pos >= this.end) throw new RangeError("truncated varint")
      const byte = buf[this.pos++]!
      const bits = byte & 0x7f
      if (shift < 28) {
        lo |= bits << shift
      } else if (shift === 28) {
        // 4 bits to the low half, 3 to the high half
        lo |= (bits & 0x0f) << 28
        hi |= bits >>> 4
      } else if (shift < 64) {
        hi |= bits << (shift - 32)
      }
      if (byte < 0x80) {
        this.lo = lo >>> 0
        this.hi = hi >>> 0
        return
      }
      shift += 7
      if (shift >= 70) throw new RangeError("varint too long")
    }
  }

  /** An `int64` varint as a number (exact when its magnitude is below 2^53). */
  int64(): number {
    this.varint64()
    return this.hi < 0x80000000 ? this.hi * twoTo32 + this.lo : Number(BigInt.asIntN(64, this.bigint()))
  }

  /** The last {@link varint64} as an unsigned BigInt. */
  bigint(): bigint {
    return (BigInt(this.hi) << 32n) | BigInt(this.lo)
  }

  /** The end of a length-delimited field that starts here. */
  delimited(): number {
    this.varint64()
    if (this.hi !== 0 || this.lo > this.end - this.pos) throw new RangeError("truncated field")
    return this.pos + this.lo
  }

  bytes(): Buffer {
    const end = this.delimited()
    const start = this.pos
    this.pos = end
    return start === end ? emptyBuffer : this.buf.subarray(start, end)
  }

  /** Skips a field of the given wire type. */
  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.varint64()
        return
      case 1:
        this.pos += 8
        break
      case 2:
        this.pos = this.delimited()
        return
      case 5:
        this.pos += 4
        break
      case 3:
        this.skipGroup()
        return
      default:
        throw new RangeError(`unexpected wire type ${wireType}`)
    }
    if (this.pos > this.end) throw new RangeError("truncated field")
  }

  /** Skips a group (deprecated, but a decoder skips it) whose start tag was just read: up to its end tag. */
  private skipGroup(): void {
    for (;;) {
      if (this.pos >= this.end) throw new RangeError("truncated group")
      const tag = this.varint32()
      if ((tag & 7) === 4) return
      this.skip(tag & 7)
    }
  }
}

const decodeKeyValue = (r: Reader, end: number): WireKeyValue => {
  let key = emptyBuffer
  let value = emptyBuffer
  let createRevision = 0
  let modRevision = 0
  let lease = "0"
  const inner = new Reader(r.buf, r.pos, end)
  while (inner.pos < end) {
    const tag = inner.varint32()
    switch (tag) {
      case (1 << 3) | 2:
        key = inner.bytes()
        break
      case (2 << 3) | 0:
        createRevision = inner.int64()
        break
      case (3 << 3) | 0:
        modRevision = inner.int64()
        break
      case (5 << 3) | 2:
        value = inner.bytes()
        break
      case (6 << 3) | 0:
        inner.varint64()
        lease = inner.hi === 0 && inner.lo === 0 ? "0" : BigInt.asIntN(64, inner.bigint()).toString()
        break
      default:
        inner.skip(tag & 7)
    }
  }
  r.pos = end
  return { key, value, createRevision, modRevision, lease }
}

const noKeyValue: WireKeyValue = { key: emptyBuffer, value: emptyBuffer, createRevision: 0, modRevision: 0, lease: "0" }

/** A `ResponseHeader` that starts at the reader's position and ends at `end`: its revision and cluster id's halves. */
class Header {
  revision = 0
  clusterLo = 0
  clusterHi = 0
  read(r: Reader, end: number): void {
    const header = new Reader(r.buf, r.pos, end)
    while (header.pos < end) {
      const tag = header.varint32()
      if (tag === ((1 << 3) | 0)) {
        header.varint64()
        this.clusterLo = header.lo
        this.clusterHi = header.hi
      } else if (tag === ((3 << 3) | 0)) {
        this.revision = header.int64()
      } else {
        header.skip(tag & 7)
      }
    }
    r.pos = end
  }
  /** The cluster id as an unsigned decimal string. */
  clusterId(): string {
    return this.clusterHi < 0x200000
      ? String(this.clusterHi * twoTo32 + this.clusterLo)
      : ((BigInt(this.clusterHi) << 32n) | BigInt(this.clusterLo)).toString()
  }
}

const decodeEvent = (r: Reader, end: number): WireEvent => {
  let type = 0
  let kv = noKeyValue
  const inner = new Reader(r.buf, r.pos, end)
  while (inner.pos < end) {
    const tag = inner.varint32()
    switch (tag) {
      case (1 << 3) | 0:
        type = inner.varint32()
        break
      case (2 << 3) | 2:
        kv = decodeKeyValue(inner, inner.delimited())
        break
      default:
        inner.skip(tag & 7)
    }
  }
  r.pos = end
  if (type !== 0 && type !== 1) throw new RangeError(`unknown event type ${type}`)
  return { type: type === 0 ? "Put" : "Delete", kv }
}

const watchResponse = (buf: Buffer): WireWatchResponse => {
  const r = new Reader(buf, 0, buf.length)
  const header = new Header()
  let created = false
  let canceled = false
  let compactRevision = 0
  let cancelReason = ""
  const events: Array<WireEvent> = []
  while (r.pos < r.end) {
    const tag = r.varint32()
    switch (tag) {
      case (1 << 3) | 2:
        header.read(r, r.delimited())
        break
      case (3 << 3) | 0:
        created = r.varint32() !== 0
        break
      case (4 << 3) | 0:
        canceled = r.varint32() !== 0
        break
      case (5 << 3) | 0:
        compactRevision = r.int64()
        break
      case (6 << 3) | 2:
        cancelReason = r.bytes().toString("utf8")
        break
      case (11 << 3) | 2:
        events.push(decodeEvent(r, r.delimited()))
        break
      default:
        r.skip(tag & 7)
    }
  }
  return {
    revision: header.revision,
    // read once per watch: a BigInt for a random 64-bit id is not for every message
    clusterId: created ? header.clusterId() : undefined,
    created,
    canceled,
    compactRevision,
    cancelReason,
    events
  }
}

const rangeResponse = (buf: Buffer): WireRangeResponse => {
  const r = new Reader(buf, 0, buf.length)
  const header = new Header()
  const kvs: Array<WireKeyValue> = []
  let more = false
  let count = 0
  while (r.pos < r.end) {
    const tag = r.varint32()
    switch (tag) {
      case (1 << 3) | 2:
        header.read(r, r.delimited())
        break
      case (2 << 3) | 2:
        kvs.push(decodeKeyValue(r, r.delimited()))
        break
      case (3 << 3) | 0:
        more = r.varint32() !== 0
        break
      case (4 << 3) | 0:
        count = r.int64()
        break
      default:
        r.skip(tag & 7)
    }
  }
  return { revision: header.revision, clusterId: header.clusterId(), kvs, more, count }
}

/** Decodes one `WatchResponse` message. */
export const decodeWatchResponse: (buf: Buffer) => WireWatchResponse | Undecodable = orUndecodable(
  "a WatchResponse",
  watchResponse
)

/** Decodes one `RangeResponse` message. */
export const decodeRangeResponse: (buf: Buffer) => WireRangeResponse | Undecodable = orUndecodable(
  "a RangeResponse",
  rangeResponse
)
