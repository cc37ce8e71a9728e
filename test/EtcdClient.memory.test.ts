import { describe, expect, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import * as EtcdClient from "../src/EtcdClient.js"
import type { EtcdError } from "../src/EtcdError.js"
import { contract } from "./contract/EtcdClientContract.js"
import { probe } from "./contract/WatchProbe.js"
import { replayedAsDelivered } from "../src/internal/client.js"

contract("EtcdClient contract: layerMemory", EtcdClient.layerMemory, { advance: TestClock.adjust })

/** Runs a test against a fresh in-memory store; its watches close before the store does. */
const withMemory = <A, E>(
  self: Effect.Effect<A, E, EtcdClient.EtcdClient | EtcdClient.MemoryEtcdControl | Scope.Scope>
): Effect.Effect<A, E> => Effect.provide(Effect.scoped(self), EtcdClient.layerMemory)

const services = Effect.all({ client: EtcdClient.EtcdClient, control: EtcdClient.MemoryEtcd })

const valueOf = (client: EtcdClient.EtcdClient, key: string) =>
  Effect.map(
    client.get(key),
    Option.map((kv) => kv.value)
  )

describe("EtcdClient.layerMemory", () => {
  it.effect("an empty store is at revision 1, lists nothing and has no leases", () =>
    withMemory(
      Effect.gen(function* () {
        const { client, control } = yield* services
        expect(yield* client.revision).toBe(1)
        expect(yield* client.list("")).toEqual({ revision: 1, entries: [], cluster: "1" })
        expect((yield* control.leases).size).toBe(0)
      })
    )
  )

  it.effect("a lease expires when the clock reaches its TTL, not a millisecond before", () =>
    withMemory(
      Effect.gen(function* () {
        const { client, control } = yield* services
        const lease = yield* client.grant(5)
        const written = yield* client.put("/k", "v", { lease })
        yield* TestClock.adjust("4999 millis")
        expect(yield* valueOf(client, "/k")).toEqual(Option.some("v"))
        expect(yield* control.leases).toEqual(new Map([[lease, 5]]))
        yield* TestClock.adjust("1 millis")
        expect(yield* client.get("/k")).toEqual(Option.none())
        expect((yield* control.leases).size).toBe(0)
        expect(yield* client.revision).toBe(written + 1)
      })
    )
  )

  it.effect("keepAliveOnce gives the lease a full TTL again, and every keep-alive is counted", () =>
    withMemory(
      Effect.gen(function* () {
        const { client, control } = yield* services
        const lease = yield* client.grant(5)
        yield* client.put("/k", "v", { lease })
        yield* TestClock.adjust("4 seconds")
        expect(yield* client.keepAliveOnce(lease)).toBe(5)
        yield* TestClock.adjust("4 seconds")
        expect(yield* client.keepAliveOnce(lease)).toBe(5)
        expect(yield* control.keepAliveCount).toBe(2)
        yield* TestClock.adjust("4999 millis")
        expect(yield* valueOf(client, "/k")).toEqual(Option.some("v"))
        yield* TestClock.adjust("1 millis")
        expect(yield* client.get("/k")).toEqual(Option.none())
      })
    )
  )

  it.effect("a TTL under etcd's 2 second minimum is raised to it (a fractional one is refused, see the contract)", () =>
    withMemory(
      Effect.gen(function* () {
        const { client, control } = yield* services
        const short = yield* client.grant(1)
        const longer = yield* client.grant(3)
        expect(yield* control.leases).toEqual(
          new Map([
            [short, 2],
            [longer, 3]
          ])
        )
        expect(yield* client.keepAliveOnce(short)).toBe(2)
        yield* TestClock.adjust("1999 millis")
        expect([...(yield* control.leases).keys()]).toEqual([short, longer])
        yield* TestClock.adjust("1 millis")
        expect([...(yield* control.leases).keys()]).toEqual([longer])
      })
    )
  )

  it.effect("lease ids are distinct decimal strings of positive 63-bit integers", () =>
    withMemory(
      Effect.gen(function* () {
        const { client } = yield* services
        const ids = yield* Effect.replicateEffect(client.grant(10), 100)
        expect(new Set(ids).size).toBe(100)
        for (const id of ids) {
          expect(id).toMatch(/^[1-9][0-9]*$/)
          expect(BigInt(id) < 2n ** 63n).toBe(true)
        }
      })
    )
  )

  it.effect("keys on several leases expiring together are deleted one lease (one revision) at a time", () =>
    withMemory(
      Effect.gen(function* () {
        const { client } = yield* services
        const first = yield* client.grant(2)
        const second = yield* client.grant(2)
        yield* client.put("/l/1a", "v", { lease: first })
        yield* client.put("/l/2a", "v", { lease: second })
        const written = yield* client.put("/l/1b", "v", { lease: first })
        const watch = yield* probe(client.watch("/l/", { fromRevision: written + 1 }))
        yield* TestClock.adjust("2 seconds")
        const events = [yield* watch.next, yield* watch.next, yield* watch.next]
        expect(events).toEqual([
          { _tag: "Delete", key: "/l/1a", revision: written + 1 },
          { _tag: "Delete", key: "/l/1b", revision: written + 1 },
          { _tag: "Delete", key: "/l/2a", revision: written + 2 }
        ])
      })
    )
  )

  it.effect("during an outage every request fails with Unavailable, and the control's client keeps working", () =>
    withMemory(
      Effect.gen(function* () {
        const { client, control } = yield* services
        const lease = yield* client.grant(10)
        yield* client.put("/k", "before")
        yield* control.setUnavailable
        const failures: ReadonlyArray<Effect.Effect<unknown, { readonly _tag: string }>> = [
          client.put("/k", "during"),
          client.get("/k"),
          client.delete("/k"),
          client.list("/"),
          client.revision,
          client.grant(10),
          client.keepAliveOnce(lease),
          client.revoke(lease),
          client.compact(1),
          client.getEntries("/"),
          client.register({ key: "/r", value: "v" }),
          client.deregister({ key: "/r", value: "v" })
        ]
        for (const failing of failures) {
          const error = yield* Effect.flip(failing)
          expect(error).toMatchObject({ _tag: "EtcdError", reason: "Unavailable" })
        }
        const watch = yield* probe(client.watch("/", { fromRevision: 0, reconnect: Schedule.recurs(0) }))
        expect(yield* watch.next).toMatchObject({ _tag: "Disconnected", error: { reason: "Unavailable" } })
        expect((yield* watch.failure).reason).toBe("Unavailable")

        yield* control.client.put("/k", "during")
        expect(yield* valueOf(control.client, "/k")).toEqual(Option.some("during"))
        expect(yield* control.client.keepAliveOnce(lease)).toBe(10)
        yield* control.restore
        expect(yield* valueOf(client, "/k")).toEqual(Option.some("during"))
      })
    )
  )

  it.effect("a watch reports Disconnected in an outage and Reconnected after restore, and misses no change", () =>
    withMemory(
      Effect.gen(function* () {
        const { client, control } = yield* services
        const start = yield* client.revision
        const watch = yield* probe(client.watch("/w/", { fromRevision: start + 1 }))
        const unaffected = yield* probe(control.client.watch("/w/", { fromRevision: start + 1 }))
        const ra = yield* client.put("/w/a", "1")
        expect(yield* watch.next).toMatchObject({ _tag: "Put", key: "/w/a", revision: ra })

        yield* control.setUnavailable
        const disconnected = yield* watch.next
        expect(disconnected._tag).toBe("Disconnected")
        expect(disconnected._tag === "Disconnected" && disconnected.error.reason).toBe("Unavailable")
        const rb = yield* control.client.put("/w/b", "2")
        // reconnect attempts during the outage fail without announcing another disconnect
        yield* TestClock.adjust("10 seconds")
        expect(yield* watch.pending).toBe(0)

        yield* control.restore
        yield* TestClock.adjust("5 seconds")
        expect(yield* watch.next).toEqual({ _tag: "Reconnected", revision: rb })
        expect(yield* watch.next).toMatchObject({ _tag: "Put", key: "/w/b", revision: rb })
        const rc = yield* client.put("/w/c", "3")
        expect(yield* watch.next).toMatchObject({ _tag: "Put", key: "/w/c", revision: rc })
        expect(yield* watch.pending).toBe(0)

        // a watch of the control's client never noticed the outage
        const seen = [yield* unaffected.next, yield* unaffected.next, yield* unaffected.next]
        expect(seen.map((e) => e._tag === "Put" && e.key)).toEqual(["/w/a", "/w/b", "/w/c"])
      })
    )
  )

  it.effect("no lease expires during an outage, and restore gives every lease a full TTL", () =>
    withMemory(
      Effect.gen(function* () {
        const { client, control } = yield* services
        const lease = yield* client.grant(5)
        yield* client.put("/k", "v", { lease })
        yield* control.setUnavailable
        yield* TestClock.adjust("1 minute")
        expect(yield* valueOf(control.client, "/k")).toEqual(Option.some("v"))
        yield* control.restore
        yield* TestClock.adjust("4999 millis")
        expect(yield* valueOf(client, "/k")).toEqual(Option.some("v"))
        yield* TestClock.adjust("1 millis")
        expect(yield* client.get("/k")).toEqual(Option.none())
        expect((yield* Effect.flip(client.keepAliveOnce(lease))).reason).toBe("LeaseNotFound")
      })
    )
  )

  it.effect("loseLease deletes the lease's keys, watchers see the deletes, and its owner gets LeaseNotFound", () =>
    withMemory(
      Effect.gen(function* () {
        const { client, control } = yield* services
        const lease = yield* client.grant(30)
        const written = yield* client.put("/svc/a", "v", { lease })
        const watch = yield* probe(client.watch("/svc/", { fromRevision: written + 1 }))
        yield* control.loseLease(lease)
        expect(yield* watch.next).toEqual({ _tag: "Delete", key: "/svc/a", revision: written + 1 })
        expect((yield* Effect.flip(client.keepAliveOnce(lease))).reason).toBe("LeaseNotFound")
        expect((yield* control.leases).size).toBe(0)
      })
    )
  )

  it.effect("watchPrefix is a signal, not one per change: a lease's three keys deleted together give one", () =>
    withMemory(
      Effect.gen(function* () {
        const { client, control } = yield* services
        const lease = yield* client.grant(30)
        for (const key of ["a", "b", "c"]) yield* client.put(`/svc/${key}`, "v", { lease })
        const signals = yield* probe(client.watchPrefix("/svc"))
        yield* signals.next
        expect(yield* client.getEntries("/svc")).toEqual(["v", "v", "v"])
        yield* control.loseLease(lease)
        yield* signals.next
        expect(yield* client.getEntries("/svc")).toEqual([])
        expect(yield* signals.pending).toBe(0)
      })
    )
  )

  it.effect(
    "wipe empties the store back to revision 1, and a watch resumed from a later revision fails with Rewound",
    () =>
      withMemory(
        Effect.gen(function* () {
          const { client, control } = yield* services
          yield* client.grant(30)
          yield* client.put("/w/a", "1")
          yield* client.put("/w/b", "2")
          const last = yield* client.put("/w/c", "3")
          yield* client.compact(last)
          const watch = yield* probe(client.watch("/w/", { fromRevision: last }))
          expect(yield* watch.next).toMatchObject({ _tag: "Put", key: "/w/c", revision: last })

          yield* control.wipe
          expect(yield* client.revision).toBe(1)
          expect((yield* client.list("")).entries).toEqual([])
          expect((yield* control.leases).size).toBe(0)
          expect((yield* watch.next)._tag).toBe("Disconnected")
          yield* TestClock.adjust("5 seconds")
          const error: EtcdError = yield* watch.failure
          expect(error.reason).toBe("Rewound")
          // nothing is compacted any more
          yield* client.put("/w/a", "again")
          yield* client.compact(2)
        })
      )
  )

  it.effect(
    "compacting revision 0 of a store never compacted works, as in etcd (whose first compacted revision is -1)",
    () =>
      withMemory(
        Effect.gen(function* () {
          const { client } = yield* services
          yield* client.compact(0)
          expect((yield* Effect.flip(client.compact(0))).reason).toBe("Compacted")
          yield* client.compact(1)
        })
      )
  )

  it.effect("compaction drops the deletes of the compacted revision, as etcd drops their tombstones", () =>
    withMemory(
      Effect.gen(function* () {
        const { client } = yield* services
        yield* client.put("/c/k", "1")
        const deleted = (yield* client.delete("/c/k")).revision
        const put = yield* client.put("/c/j", "2")
        yield* client.compact(deleted)
        const watch = yield* probe(client.watch("/c/", { fromRevision: deleted }))
        expect(yield* watch.next).toMatchObject({ _tag: "Put", key: "/c/j", revision: put })
      })
    )
  )

  it.effect("closing the store cancels its open watches", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(EtcdClient.layerMemory, scope)
      const client = Context.get(context, EtcdClient.EtcdClient)
      const written = yield* client.put("/k", "v")
      const watch = yield* probe(client.watch("/", { fromRevision: written }))
      // the watch is open once it delivered the put
      expect((yield* watch.next)._tag).toBe("Put")
      yield* Scope.close(scope, Exit.void)
      expect((yield* watch.failure).reason).toBe("Canceled")
      expect((yield* Effect.flip(client.revision)).reason).toBe("Unavailable")
    }).pipe(Effect.scoped)
  )
})

describe("a resumed watch's replay of the last revision it delivered", () => {
  const put = (key: string, value: string) =>
    ({ _tag: "Put", key, value, malformed: false, revision: 7, lease: undefined }) as const
  const del = (key: string) => ({ _tag: "Delete", key, revision: 7 }) as const
  const delivered = [put("/s/a", "1"), del("/s/b"), del("/s/c"), put("/s/d", "2"), del("/s/e")]
  const check = (replayed: ReadonlyArray<ReturnType<typeof put> | ReturnType<typeof del>>) =>
    replayedAsDelivered({ revision: 7, expected: delivered, replayed: [...replayed] })

  it("passes as delivered, or with some or all of its deletes gone (a compaction there, finished or not)", () => {
    expect(check(delivered)).toBe(true)
    expect(check([put("/s/a", "1"), put("/s/d", "2")])).toBe(true)
    expect(check([put("/s/a", "1"), del("/s/c"), put("/s/d", "2")])).toBe(true)
    expect(check([put("/s/a", "1"), del("/s/b"), put("/s/d", "2"), del("/s/e")])).toBe(true)
  })

  it("fails with a put missing, another key or value, a change too many, or the order changed (another store)", () => {
    expect(check([put("/s/a", "1"), del("/s/b"), del("/s/c"), del("/s/e")])).toBe(false)
    expect(check([])).toBe(false)
    expect(check([put("/s/a", "1"), put("/s/d", "other")])).toBe(false)
    expect(check([put("/s/x", "1"), put("/s/d", "2")])).toBe(false)
    expect(check([...delivered, put("/s/f", "3")])).toBe(false)
    expect(check([put("/s/d", "2"), put("/s/a", "1")])).toBe(false)
    expect(check([put("/s/a", "1"), del("/s/x"), put("/s/d", "2")])).toBe(false)
  })
})
