/**
 * Our decoding of etcd's WatchResponse and RangeResponse against etcd3's own (@grpc/proto-loader
 * over the same .proto, with etcd3's options): every field the watch reads
 * agrees on messages encoded by protobuf.js, with 64-bit values over the whole
 * range, keys and values that are not UTF-8, and fields it does not know; a
 * truncated message fails to decode instead of decoding to something.
 */
import { describe, expect, it } from "@effect/vitest"
import * as ProtoLoader from "@grpc/proto-loader"
import { createRequire } from "node:module"
import * as Path from "node:path"
import {
  decodeRangeResponse as decodeRangeOrNot,
  decodeWatchResponse as decodeWatchOrNot,
  Undecodable
} from "../src/internal/wire.js"

// etcd3's loading of its protos (lib/connection-pool.js), from the copy it ships
const protoFile = Path.join(Path.dirname(createRequire(import.meta.url).resolve("etcd3")), "..", "proto", "rpc.proto")
const definition = ProtoLoader.loadSync(protoFile, {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true
})
const watchMethod = (definition["etcdserverpb.Watch"] as ProtoLoader.ServiceDefinition)["Watch"]!
/** The decoders, for a message that must decode. */
const decoded = <A>(result: A | Undecodable): A => {
  if (result instanceof Undecodable) throw new Error(result.message)
  return result
}
const decodeWatchResponse = (buf: Buffer) => decoded(decodeWatchOrNot(buf))
const decodeRangeResponse = (buf: Buffer) => decoded(decodeRangeOrNot(buf))

const encode = (message: object): Buffer => watchMethod.responseSerialize(message)
const rangeMethod = (definition["etcdserverpb.KV"] as ProtoLoader.ServiceDefinition)["Range"]!

interface Reference {
  readonly header: { readonly cluster_id: string; readonly revision: string }
  readonly created: boolean
  readonly canceled: boolean
  readonly compact_revision: string
  readonly cancel_reason: string
  readonly events: ReadonlyArray<{
    readonly type: "Put" | "Delete"
    readonly kv: { readonly key: Buffer; readonly value: Buffer; readonly mod_revision: string; readonly lease: string }
  }>
}
const reference = (buf: Buffer): Reference => watchMethod.responseDeserialize(buf) as Reference

interface RangeReference {
  readonly header: { readonly cluster_id: string; readonly revision: string }
  readonly kvs: ReadonlyArray<{
    readonly key: Buffer
    readonly value: Buffer
    readonly create_revision: string
    readonly mod_revision: string
    readonly lease: string
  }>
  readonly more: boolean
  readonly count: string
}

/** mulberry32: deterministic, so a failure replays. */
const prng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const expectSame = (buf: Buffer) => {
  const ours = decodeWatchResponse(buf)
  const ref = reference(buf)
  expect(ours.revision).toBe(Number(ref.header.revision))
  expect(ours.clusterId).toBe(ref.created ? ref.header.cluster_id : undefined)
  expect(ours.created).toBe(ref.created)
  expect(ours.canceled).toBe(ref.canceled)
  expect(ours.compactRevision).toBe(Number(ref.compact_revision))
  expect(ours.cancelReason).toBe(ref.cancel_reason)
  expect(ours.events.map((e) => e.type)).toEqual(ref.events.map((e) => e.type))
  ours.events.forEach((event, i) => {
    const kv = ref.events[i]!.kv
    expect(event.kv.key.equals(kv.key)).toBe(true)
    expect(event.kv.value.equals(kv.value)).toBe(true)
    expect(event.kv.modRevision).toBe(Number(kv.mod_revision))
    expect(event.kv.lease).toBe(kv.lease)
  })
}

describe("decodeWatchResponse", () => {
  it("reads what etcd3's decoding reads, over random messages", () => {
    const random = prng(7)
    const pick = <A>(xs: ReadonlyArray<A>): A => xs[Math.floor(random() * xs.length)]!
    const u64 = (): bigint => (BigInt(Math.floor(random() * 2 ** 32)) << 32n) | BigInt(Math.floor(random() * 2 ** 32))
    // 64-bit values at the edges and in between: 0, small, 2^31 and 2^32 around, 2^53 - 1, random
    const int64 = (): string =>
      pick([
        () => "0",
        () => String(Math.floor(random() * 1000)),
        () => String(2 ** 31 - 1 + Math.floor(random() * 3)),
        () => String(2 ** 32 - 1 + Math.floor(random() * 3)),
        () => String(2 ** 53 - 1),
        () => BigInt.asIntN(64, u64()).toString(),
        () => String(-1 - Math.floor(random() * 1000))
      ])()
    const revision = (): string =>
      pick([() => "0", () => String(Math.floor(random() * 2 ** 20)), () => String(Math.floor(random() * 2 ** 53))])()
    const bytes = (): Buffer =>
      pick([
        () => Buffer.alloc(0),
        () => Buffer.from(`/services/greeter/${Math.floor(random() * 1e6)}`, "utf8"),
        () => Buffer.from("/svc/é/雪/😀", "utf8"),
        () => Buffer.from(Array.from({ length: 1 + Math.floor(random() * 40) }, () => Math.floor(random() * 256))),
        () => Buffer.alloc(200 + Math.floor(random() * 300), "x")
      ])()
    const kv = () => ({
      key: bytes(),
      create_revision: revision(),
      mod_revision: revision(),
      version: int64(),
      value: bytes(),
      lease: int64()
    })
    for (let n = 0; n < 2000; n++) {
      const message = {
        header: { cluster_id: u64().toString(), member_id: u64().toString(), revision: revision(), raft_term: int64() },
        watch_id: int64(),
        created: random() < 0.3,
        canceled: random() < 0.2,
        compact_revision: random() < 0.5 ? "0" : revision(),
        cancel_reason: random() < 0.7 ? "" : pick(["etcdserver: mvcc: required revision has been compacted", "é雪😀"]),
        fragment: random() < 0.1,
        events: Array.from({ length: Math.floor(random() * 6) }, () => ({
          type: random() < 0.5 ? "Put" : "Delete",
          kv: kv(),
          ...(random() < 0.3 ? { prev_kv: kv() } : {})
        }))
      }
      expectSame(encode(message))
    }
  })

  it("reads a RangeResponse as etcd3's decoding does, over random messages", () => {
    const random = prng(11)
    const u64 = (): bigint => (BigInt(Math.floor(random() * 2 ** 32)) << 32n) | BigInt(Math.floor(random() * 2 ** 32))
    const revision = () => String(Math.floor(random() * (random() < 0.5 ? 2 ** 20 : 2 ** 53)))
    for (let n = 0; n < 300; n++) {
      const kvs = Array.from({ length: Math.floor(random() * 40) }, (_, i) => ({
        key: Buffer.from(random() < 0.9 ? `/services/x/${i}` : "\xff\xfe", random() < 0.9 ? "utf8" : "latin1"),
        create_revision: revision(),
        mod_revision: revision(),
        version: String(Math.floor(random() * 10)),
        value: random() < 0.1 ? Buffer.alloc(0) : Buffer.from(`http://10.0.0.${i}:8080`),
        lease: random() < 0.3 ? "0" : BigInt.asIntN(64, u64()).toString()
      }))
      const buf = rangeMethod.responseSerialize({
        header: { cluster_id: u64().toString(), member_id: u64().toString(), revision: revision(), raft_term: "3" },
        kvs,
        more: random() < 0.2,
        count: String(kvs.length + Math.floor(random() * 3))
      })
      const ours = decodeRangeResponse(buf)
      const ref = rangeMethod.responseDeserialize(buf) as RangeReference
      expect(ours.revision).toBe(Number(ref.header.revision))
      expect(ours.clusterId).toBe(ref.header.cluster_id)
      expect(ours.more).toBe(ref.more)
      expect(ours.count).toBe(Number(ref.count))
      expect(ours.kvs.length).toBe(ref.kvs.length)
      ours.kvs.forEach((kv, i) => {
        const r = ref.kvs[i]!
        expect([kv.key.equals(r.key), kv.value.equals(r.value)]).toEqual([true, true])
        expect([kv.createRevision, kv.modRevision, kv.lease]).toEqual([
          Number(r.create_revision),
          Number(r.mod_revision),
          r.lease
        ])
      })
    }
    // an empty listing: no field at all but the header
    const empty = decodeRangeResponse(rangeMethod.responseSerialize({ header: { cluster_id: "1", revision: "9" } }))
    expect(empty).toEqual({ revision: 9, clusterId: "1", kvs: [], more: false, count: 0 })
  })

  it("reads 64-bit ids over the whole range as etcd3 writes them", () => {
    for (const id of ["1", "9007199254740993", "9223372036854775807", "-9223372036854775808", "-1"]) {
      const buf = encode({
        header: { cluster_id: "18446744073709551615", revision: "5" },
        created: true,
        events: [{ type: "Put", kv: { key: Buffer.from("k"), value: Buffer.from("v"), mod_revision: "5", lease: id } }]
      })
      const ours = decodeWatchResponse(buf)
      expect(ours.clusterId).toBe("18446744073709551615")
      expect(ours.events[0]!.kv.lease).toBe(id)
      expectSame(buf)
    }
  })

  it("skips fields it does not know, of every wire type", () => {
    const base = encode({
      header: { cluster_id: "42", revision: "7" },
      created: true,
      events: [{ type: "Delete", kv: { key: Buffer.from("/a"), mod_revision: "7" } }]
    })
    const unknown = Buffer.from([
      // field 15, varint (a 10-byte one)
      (15 << 3) | 0,
      0xff,
      0xff,
      0xff,
      0xff,
      0xff,
      0xff,
      0xff,
      0xff,
      0xff,
      0x01,
      // field 16, fixed64
      0x80 | ((16 << 3) & 0x7f) | 1,
      (16 << 3) >> 7,
      1,
      2,
      3,
      4,
      5,
      6,
      7,
      8,
      // field 17, length-delimited, 3 bytes
      0x80 | ((17 << 3) & 0x7f) | 2,
      (17 << 3) >> 7,
      3,
      9,
      9,
      9,
      // field 18, fixed32
      0x80 | ((18 << 3) & 0x7f) | 5,
      (18 << 3) >> 7,
      1,
      2,
      3,
      4
    ])
    const ours = decodeWatchResponse(Buffer.concat([unknown, base, unknown]))
    expect(ours).toEqual(decodeWatchResponse(base))
    expect(ours.revision).toBe(7)
    expect(ours.clusterId).toBe("42")
    expect(ours.events.map((e) => [e.type, e.kv.key.toString(), e.kv.modRevision])).toEqual([["Delete", "/a", 7]])
    expectSame(Buffer.concat([unknown, base, unknown]))
  })

  it("says a truncated message did not decode instead of decoding part of it", () => {
    const buf = encode({
      header: { cluster_id: "42", revision: "7" },
      events: [
        { type: "Put", kv: { key: Buffer.from("/services/a"), value: Buffer.from("http://a"), mod_revision: "7" } }
      ]
    })
    let undecodable = 0
    for (let cut = 1; cut < buf.length; cut++) {
      const result = decodeWatchOrNot(buf.subarray(0, cut))
      if (result instanceof Undecodable) {
        expect(result.message).toMatch(new RegExp(`^a WatchResponse of ${cut} bytes did not decode: truncated`))
        undecodable++
      }
    }
    // every cut inside the header or the event's fields is a truncated field; a cut between
    // two top-level fields is a shorter message, which protobuf reads as one
    expect(undecodable).toBeGreaterThan(buf.length - 4)
    expect(decodeWatchOrNot(Buffer.from([(3 << 3) | 0]))).toEqual(
      new Undecodable("a WatchResponse of 1 bytes did not decode: truncated varint")
    )
    const range = decodeRangeOrNot(Buffer.from([(2 << 3) | 2, 5, 1]))
    expect(range instanceof Undecodable && range.message).toBe(
      "a RangeResponse of 3 bytes did not decode: truncated field"
    )
  })

  it("skips groups (wire types 3 and 4), nested too, and refuses a length past the message", () => {
    const base = [...encode({ header: { cluster_id: "42", revision: "9" }, created: true })]
    // field 20, a group holding a varint field and a nested group (field 21), then its end
    const group = [
      (20 << 3) | 3,
      1,
      (1 << 3) | 0,
      7,
      (21 << 3) | 3,
      1,
      (2 << 3) | 0,
      1,
      (21 << 3) | 4,
      1,
      (20 << 3) | 4,
      1
    ]
    const withGroup = decodeWatchResponse(Buffer.from([...group, ...base]))
    expect([withGroup.revision, withGroup.clusterId]).toEqual([9, "42"])
    // a group that does not end
    expect(decodeWatchOrNot(Buffer.from([(20 << 3) | 3, 1, (1 << 3) | 0, 7]))).toBeInstanceOf(Undecodable)
    // an end of group outside a group
    expect(decodeWatchOrNot(Buffer.from([(20 << 3) | 4, 1]))).toBeInstanceOf(Undecodable)
    // field 15, length-delimited, length 2^32 + 1 (a 32-bit reading would take it for 1)
    const long = [(15 << 3) | 2, 0x81, 0x80, 0x80, 0x80, 0x10, 0]
    expect(decodeWatchOrNot(Buffer.from([...long, ...base]))).toBeInstanceOf(Undecodable)
  })
})
