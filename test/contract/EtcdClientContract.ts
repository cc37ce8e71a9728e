/**
 * The contract every `EtcdClient` honours, as a suite that runs against any
 * layer: the in-memory twin (on the `TestClock`) and a real etcd server.
 *
 * Every test works under its own key prefix, so the whole suite can share one
 * server; the tests of one suite run one after another, and the revision
 * assertions expect nobody else to write to that server meanwhile. Every lease
 * a test grants is revoked or expired by the end of the test.
 */
import { expect, layer } from "@effect/vitest"
import type { Vitest } from "@effect/vitest"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import { randomUUID } from "node:crypto"
import { EtcdClient, type WatchEvent } from "../../src/EtcdClient.js"
import type { EtcdError } from "../../src/EtcdError.js"
import * as TtlOption from "../../src/TtlOption.js"
import { probe, type WatchProbe } from "./WatchProbe.js"

/**
 * How to run the contract against one implementation.
 */
export interface ContractOptions {
  /**
   * Lets at least `duration` pass on the client's clock: `TestClock.adjust` for
   * the in-memory client, `Effect.void` for a real server. Tests never rely on
   * it alone: after advancing they wait for the event that time should cause
   * (a lease expiry's deletes), so with a real server real time does the work.
   */
  readonly advance: (duration: Duration.DurationInput) => Effect.Effect<void>
  /**
   * Run the tests on the real clock, without the test services (`TestClock`
   * and friends). Set it for a real server, whose client needs real timeouts.
   * Default `false`.
   */
  readonly live?: boolean | undefined
  /** How long building and releasing the layer may take (spawning a server). Default 60 seconds. */
  readonly timeout?: Duration.DurationInput | undefined
}

const run = randomUUID().slice(0, 8)
let tests = 0

/** A key prefix that no other test (of this run or an earlier one) uses, ending in `/`. */
const uniquePrefix = (label: string): string => {
  tests += 1
  return `/contract-${run}/${tests}-${label}/`
}

type Change = Extract<WatchEvent, { readonly _tag: "Put" | "Delete" }>

/** The next change of a watch; connection events (possible on a real network) are skipped. */
const nextChange = (watch: WatchProbe<WatchEvent, EtcdError>): Effect.Effect<Change> =>
  Effect.flatMap(watch.next, (event) =>
    event._tag === "Put" || event._tag === "Delete" ? Effect.succeed(event) : nextChange(watch)
  )

const nextChanges = (watch: WatchProbe<WatchEvent, EtcdError>, n: number): Effect.Effect<ReadonlyArray<Change>> =>
  Effect.forEach(Array.from({ length: n }), () => nextChange(watch))

const put = (key: string, value: string, revision: number, lease?: string): Change => ({
  _tag: "Put",
  key,
  value,
  malformed: false,
  revision,
  lease
})

const del = (key: string, revision: number): Change => ({ _tag: "Delete", key, revision })

/** A lease that is revoked when the test's scope closes, unless it is already gone. */
const scopedLease = (client: EtcdClient, ttlSeconds: number) =>
  Effect.acquireRelease(client.grant(ttlSeconds), (lease) => Effect.ignore(client.revoke(lease)))

/**
 * Declares the contract suite, named `name`, against the client `layer`. The
 * layer is built once for the whole suite.
 *
 * @example
 * contract("EtcdClient (memory)", EtcdClient.layerMemory, { advance: TestClock.adjust })
 * contract("EtcdClient (etcd)", etcdLayer, { advance: () => Effect.void, live: true })
 */
export const contract = <E>(name: string, clientLayer: Layer.Layer<EtcdClient, E>, options: ContractOptions): void => {
  const timeout = options.timeout ?? "60 seconds"
  if (options.live === true) {
    layer(clientLayer, { timeout, excludeTestServices: true })(name, (it) => suite(it.scoped, options))
  } else {
    layer(clientLayer, { timeout })(name, (it) => suite(it.scoped, options))
  }
}

const suite = (test: Vitest.Test<EtcdClient | Scope.Scope>, options: ContractOptions): void => {
  // ---- keys and revisions ----

  test("put returns the next revision and get reads the value back with its create and mod revisions", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const key = `${uniquePrefix("put")}k`
      const before = yield* client.revision
      const first = yield* client.put(key, "v1")
      expect(first).toBe(before + 1)
      expect(yield* client.get(key)).toEqual(
        Option.some({ key, value: "v1", malformed: false, createRevision: first, modRevision: first, lease: undefined })
      )
      const second = yield* client.put(key, "v2")
      expect(second).toBe(first + 1)
      expect(yield* client.get(key)).toEqual(
        Option.some({
          key,
          value: "v2",
          malformed: false,
          createRevision: first,
          modRevision: second,
          lease: undefined
        })
      )
      expect(yield* client.revision).toBe(second)
    }))

  test("get of a missing key is None and leaves the revision unchanged", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const before = yield* client.revision
      expect(yield* client.get(`${uniquePrefix("get-missing")}nothing`)).toEqual(Option.none())
      expect(yield* client.revision).toBe(before)
    }))

  test("delete removes a key at a new revision; deleting a missing key changes nothing", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const key = `${uniquePrefix("delete")}k`
      const written = yield* client.put(key, "v")
      expect(yield* client.delete(key)).toEqual({ deleted: 1, revision: written + 1 })
      expect(yield* client.get(key)).toEqual(Option.none())
      expect(yield* client.delete(key)).toEqual({ deleted: 0, revision: written + 1 })
      expect(yield* client.revision).toBe(written + 1)
    }))

  test("list returns the keys under a prefix in byte order, at the revision it was read at", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const prefix = uniquePrefix("list")
      const empty = yield* client.list(prefix)
      expect(empty).toEqual({ revision: yield* client.revision, entries: [], cluster: empty.cluster })
      // the cluster id etcd gives in every answer's header, as a decimal string
      expect(empty.cluster).toMatch(/^[1-9][0-9]*$/)
      // UTF-8 byte order: U+FFFD (EF BF BD) sorts before U+1F600 (F0 9F 98 80), unlike in UTF-16
      const names = ["b", "\u{1F600}", "a/2", "\uFFFD", "é", "A", "a/1"]
      const revisions = new Map<string, number>()
      for (const name of names) revisions.set(name, yield* client.put(`${prefix}${name}`, `value of ${name}`))
      // shares the prefix's characters but not its final "/"
      const last = yield* client.put(`${prefix.slice(0, -1)}-sibling`, "outside")
      const listing = yield* client.list(prefix)
      expect(listing.revision).toBe(last)
      expect(listing.entries).toEqual(
        ["A", "a/1", "a/2", "b", "é", "\uFFFD", "\u{1F600}"].map((name) => ({
          key: `${prefix}${name}`,
          value: `value of ${name}`,
          malformed: false,
          createRevision: revisions.get(name),
          modRevision: revisions.get(name),
          lease: undefined
        }))
      )
      expect((yield* client.list(`${prefix}a/`)).entries.map((kv) => kv.key)).toEqual([`${prefix}a/1`, `${prefix}a/2`])
    }))

  // ---- watches ----

  test("a watch from revision R + 1 delivers exactly the changes after R, in order, then live changes", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const prefix = uniquePrefix("watch")
      const r = yield* client.put(`${prefix}a`, "1")
      const rb = yield* client.put(`${prefix}b`, "2")
      yield* client.put(`${prefix.slice(0, -1)}-outside`, "x")
      const rd = (yield* client.delete(`${prefix}a`)).revision
      const watch = yield* probe(client.watch(prefix, { fromRevision: r + 1 }))
      expect(yield* nextChanges(watch, 2)).toEqual([put(`${prefix}b`, "2", rb), del(`${prefix}a`, rd)])
      yield* client.put(`${prefix.slice(0, -1)}-outside`, "y")
      const rc = yield* client.put(`${prefix}c`, "3")
      const rc2 = yield* client.put(`${prefix}c`, "4")
      expect(yield* nextChanges(watch, 2)).toEqual([put(`${prefix}c`, "3", rc), put(`${prefix}c`, "4", rc2)])
    }))

  test("a watch from a compacted revision fails with Compacted; the compacted revision itself is still watched", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const prefix = uniquePrefix("compacted")
      const r1 = yield* client.put(`${prefix}k`, "1")
      const r2 = yield* client.put(`${prefix}k`, "2")
      yield* client.compact(r2)
      const fromCompacted = yield* probe(client.watch(prefix, { fromRevision: r1 }))
      expect((yield* fromCompacted.failure).reason).toBe("Compacted")
      const fromKept = yield* probe(client.watch(prefix, { fromRevision: r2 }))
      expect(yield* nextChange(fromKept)).toEqual(put(`${prefix}k`, "2", r2))
    }))

  test("compacting a future revision fails, and compacting an already compacted revision fails with Compacted", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const current = yield* client.put(`${uniquePrefix("compact")}k`, "v")
      yield* client.compact(current)
      const twice = yield* Effect.flip(client.compact(current))
      expect(twice.reason).toBe("Compacted")
      const future = yield* Effect.flip(client.compact(current + 1000))
      expect(future.reason).toBe("Other")
      expect(yield* client.revision).toBe(current)
    }))

  // ---- leases ----

  test("a put on a lease id that is not one etcd gives (not a decimal number) fails with LeaseNotFound and writes nothing", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const key = `${uniquePrefix("bad-lease")}k`
      for (const lease of ["abc", "0x10", "", "-1", "1.5"]) {
        const error = yield* Effect.flip(client.put(key, "v", { lease }))
        expect(error).toMatchObject({ _tag: "EtcdError", operation: "put", reason: "LeaseNotFound" })
      }
      expect(Option.isNone(yield* client.get(key))).toBe(true)
    }))

  test("grant refuses a TTL that is not a positive whole number of seconds, before any lease exists", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      for (const ttl of [2.5, 0, -1, Number.NaN]) {
        const error = yield* Effect.flip(client.grant(ttl))
        expect(error).toMatchObject({ _tag: "EtcdError", operation: "grant", reason: "Other" })
        expect(error.message).toContain("TTL must be a positive integer")
      }
    }))

  test("keepAliveOnce returns the lease's TTL; revoke deletes its keys in one revision; the lease is then gone", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const prefix = uniquePrefix("revoke")
      const lease = yield* client.grant(5)
      expect(yield* client.keepAliveOnce(lease)).toBe(5)
      const rb = yield* client.put(`${prefix}b`, "2", { lease })
      const ra = yield* client.put(`${prefix}a`, "1", { lease })
      expect(Option.map(yield* client.get(`${prefix}a`), (kv) => kv.lease)).toEqual(Option.some(lease))
      const watch = yield* probe(client.watch(prefix, { fromRevision: rb }))
      yield* client.revoke(lease)
      expect(yield* client.revision).toBe(ra + 1)
      // the deletes of one revision, in key order
      expect(yield* nextChanges(watch, 4)).toEqual([
        put(`${prefix}b`, "2", rb, lease),
        put(`${prefix}a`, "1", ra, lease),
        del(`${prefix}a`, ra + 1),
        del(`${prefix}b`, ra + 1)
      ])
      expect((yield* client.list(prefix)).entries).toEqual([])
      expect((yield* Effect.flip(client.keepAliveOnce(lease))).reason).toBe("LeaseNotFound")
      expect((yield* Effect.flip(client.revoke(lease))).reason).toBe("LeaseNotFound")
    }))

  test("a put moves the key to the lease it names, or to none: revoking the old lease leaves the key", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const key = `${uniquePrefix("move-lease")}k`
      const first = yield* scopedLease(client, 5)
      const second = yield* scopedLease(client, 5)
      yield* client.put(key, "1", { lease: first })
      yield* client.put(key, "2", { lease: second })
      yield* client.revoke(first)
      expect(Option.map(yield* client.get(key), (kv) => [kv.value, kv.lease])).toEqual(Option.some(["2", second]))
      const plain = yield* client.put(key, "3")
      yield* client.revoke(second)
      expect(Option.map(yield* client.get(key), (kv) => [kv.value, kv.lease])).toEqual(Option.some(["3", undefined]))
      expect(yield* client.revision).toBe(plain)
    }))

  test("revoking a lease without keys leaves the revision unchanged", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const lease = yield* client.grant(5)
      const before = yield* client.revision
      yield* client.revoke(lease)
      expect(yield* client.revision).toBe(before)
    }))

  test("a put on a lease that does not exist fails with LeaseNotFound and writes nothing", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const key = `${uniquePrefix("put-unknown-lease")}k`
      const lease = yield* client.grant(5)
      yield* client.revoke(lease)
      const before = yield* client.revision
      expect((yield* Effect.flip(client.put(key, "v", { lease }))).reason).toBe("LeaseNotFound")
      expect(yield* client.get(key)).toEqual(Option.none())
      expect(yield* client.revision).toBe(before)
    }))

  test("a lease that is not kept alive expires: its keys are deleted in one revision and a watcher sees the deletes", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const prefix = uniquePrefix("expiry")
      const lease = yield* scopedLease(client, 2)
      yield* client.put(`${prefix}b`, "2", { lease })
      yield* client.put(`${prefix}a`, "1", { lease })
      const plain = yield* client.put(`${prefix}c`, "plain")
      const watch = yield* probe(client.watch(prefix, { fromRevision: plain + 1 }))
      yield* options.advance("3 seconds")
      // a real server expires the lease in its own time: wait for the deletes
      expect(yield* nextChanges(watch, 2)).toEqual([del(`${prefix}a`, plain + 1), del(`${prefix}b`, plain + 1)])
      expect((yield* client.list(prefix)).entries.map((kv) => kv.key)).toEqual([`${prefix}c`])
      expect((yield* Effect.flip(client.keepAliveOnce(lease))).reason).toBe("LeaseNotFound")
    }))

  // ---- go-kit's surface ----

  test("watchPrefix emits at once and once after each change under the prefix", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const base = uniquePrefix("watch-prefix")
      // go-kit style: no trailing slash; `svcx/` must not count as under `svc`
      const signals = yield* probe(client.watchPrefix(`${base}svc`))
      yield* signals.next
      expect(yield* client.getEntries(`${base}svc`)).toEqual([])
      yield* client.put(`${base}svc/1`, "a")
      yield* signals.next
      expect(yield* client.getEntries(`${base}svc`)).toEqual(["a"])
      yield* client.put(`${base}svcx/1`, "outside")
      yield* client.put(`${base}svc/2`, "b")
      yield* signals.next
      expect(yield* client.getEntries(`${base}svc`)).toEqual(["a", "b"])
      yield* client.delete(`${base}svc/1`)
      yield* signals.next
      expect(yield* client.getEntries(`${base}svc`)).toEqual(["b"])
      expect(yield* signals.pending).toBe(0)
    }))

  test("getEntries normalises the prefix: /services/bar does not see /services/barsvc2/x", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const base = uniquePrefix("get-entries")
      yield* client.put(`${base}services/bar/1`, "bar-1")
      yield* client.put(`${base}services/barsvc2/x`, "barsvc2-x")
      expect(yield* client.getEntries(`${base}services/bar`)).toEqual(["bar-1"])
      expect(yield* client.getEntries(`${base}services/bar/`)).toEqual(["bar-1"])
      expect(yield* client.getEntries(`${base}services/barsvc2`)).toEqual(["barsvc2-x"])
      expect(yield* client.getEntries(`${base}services/nothing`)).toEqual([])
    }))

  test("register puts the key on a fresh lease of the TTL; deregister deletes the key and revokes the lease", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const key = `${uniquePrefix("register")}instance`
      const ttl = yield* TtlOption.make({ heartbeat: "1 second", ttl: "5 seconds" })
      const lease = yield* client.register({ key, value: "http://10.0.0.1:8080", ttl })
      expect(Option.isSome(lease)).toBe(true)
      const leaseId = Option.getOrThrow(lease)
      expect(Option.map(yield* client.get(key), (kv) => [kv.value, kv.lease])).toEqual(
        Option.some(["http://10.0.0.1:8080", leaseId])
      )
      expect(yield* client.keepAliveOnce(leaseId)).toBe(5)
      yield* client.deregister({ key, value: "http://10.0.0.1:8080", ttl })
      expect(yield* client.get(key)).toEqual(Option.none())
      // go-kit leaks the lease; we revoke it
      expect((yield* Effect.flip(client.keepAliveOnce(leaseId))).reason).toBe("LeaseNotFound")
    }))

  test("register without a TTL puts a plain key, and deregister deletes it", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const key = `${uniquePrefix("register-plain")}instance`
      expect(yield* client.register({ key, value: "v" })).toEqual(Option.none())
      expect(Option.map(yield* client.get(key), (kv) => [kv.value, kv.lease])).toEqual(Option.some(["v", undefined]))
      yield* client.deregister({ key, value: "v" })
      expect(yield* client.get(key)).toEqual(Option.none())
    }))

  test("register fails with NoKey on an empty key and NoValue on an empty value, writing nothing", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const prefix = uniquePrefix("register-invalid")
      const ttl = yield* TtlOption.make()
      const before = yield* client.revision
      const noKey = yield* Effect.flip(client.register({ key: "", value: "v", ttl }))
      expect(noKey._tag).toBe("NoKey")
      expect(noKey.message).toBe("no key provided")
      const noValue = yield* Effect.flip(client.register({ key: `${prefix}k`, value: "", ttl }))
      expect(noValue._tag).toBe("NoValue")
      expect(noValue.message).toBe("no value provided")
      const handled = yield* client
        .register({ key: `${prefix}k`, value: "" })
        .pipe(Effect.catchTag("NoValue", () => Effect.succeed("handled")))
      expect(handled).toBe("handled")
      expect(yield* client.revision).toBe(before)
      expect((yield* client.list(prefix)).entries).toEqual([])
    }))

  test("deregister fails with NoKey on an empty key, deleting nothing", () =>
    Effect.gen(function* () {
      const client = yield* EtcdClient
      const key = `${uniquePrefix("deregister-invalid")}k`
      const written = yield* client.put(key, "v")
      const noKey = yield* Effect.flip(client.deregister({ key: "", value: "v" }))
      expect(noKey._tag).toBe("NoKey")
      expect(yield* client.revision).toBe(written)
      expect(Option.isSome(yield* client.get(key))).toBe(true)
    }))
}
