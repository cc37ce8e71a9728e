/**
 * The subscriber against a model, batch after batch (a review's differential
 * test of the persistent rows): instances, the endpoint set, `endpoints`, a
 * fresh and a long-lived balancer and the endpoint scopes all agree, through
 * the watch's batches and the in-memory etcd's own watch; and the balancers'
 * view follows invalidation, recovery, a relist after a compaction and close.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as Balancer from "../src/Balancer.js"
import type { Factory } from "../src/Endpoint.js"
import * as EtcdClient from "../src/EtcdClient.js"
import * as Subscriber from "../src/Subscriber.js"
import { waitFor } from "./testing-helpers.js"

const prng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const name = (i: number) => `/svc/${String(i).padStart(4, "0")}`

describe("Subscriber against a model", () => {
  for (const [seed, direct] of [
    [1, false],
    [2, false],
    [3, false],
    [4, true],
    [5, true]
  ] as const) {
    it.effect(
      `random batches: instances, endpointSet, endpoints, balancers and scopes agree (seed ${seed}, direct ${direct})`,
      () =>
        Effect.gen(function* () {
          const memory = yield* EtcdClient.MemoryEtcd
          const random = prng(seed)
          const model = new Map<string, string>()
          let counter = 0
          const newValue = () => {
            const r = random()
            counter++
            return r < 0.15 ? `bad${counter}` : r < 0.55 ? `s${counter}` : `p${counter}`
          }
          for (let i = 0; i < 300; i += 2) {
            const v = newValue()
            model.set(name(i), v)
            yield* memory.client.put(name(i), v)
          }
          let revision = yield* memory.client.revision
          const queue = yield* Queue.unbounded<EtcdClient.WatchEvent>()
          const client = yield* EtcdClient.EtcdClient
          const open = new Set<string>()
          const factory: Factory<void, string, never, string> = (value) =>
            value.startsWith("bad")
              ? Effect.fail(value)
              : value.startsWith("s")
                ? Effect.gen(function* () {
                    open.add(value)
                    yield* Effect.addFinalizer(() => Effect.sync(() => open.delete(value)))
                    return () => Effect.succeed(value)
                  })
                : Effect.succeed(() => Effect.succeed(value))
          const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory }).pipe(
            Effect.provideService(
              EtcdClient.EtcdClient,
              direct ? client : { ...client, watch: () => Stream.fromQueue(queue) }
            )
          )
          const longRR = Balancer.roundRobin(subscriber)
          const pickAll = (balancer: Balancer.Balancer<void, string, never, unknown>, n: number) =>
            Effect.forEach(Array.from({ length: n }), () => Effect.flatMap(balancer, (endpoint) => endpoint()))
          const check = (round: number) =>
            Effect.gen(function* () {
              const expected = JSON.stringify([...model.entries()].sort(([a], [b]) => (a < b ? -1 : 1)))
              yield* waitFor(
                subscriber.instances,
                (m) => JSON.stringify([...m.entries()]) === expected,
                `round ${round}`
              )
              const keys = [...model.keys()].sort().filter((k) => !model.get(k)!.startsWith("bad"))
              const values = keys.map((k) => model.get(k)!)
              const set = yield* subscriber.endpointSet.get
              expect(set.keys, `keys round ${round}`).toEqual(keys)
              expect(set.size).toBe(keys.length)
              const viaEndpoints = yield* Effect.flatMap(subscriber.endpoints, (es) => Effect.forEach(es, (e) => e()))
              expect(viaEndpoints, `endpoints round ${round}`).toEqual(values)
              if (values.length > 0) {
                expect(
                  yield* pickAll(Balancer.roundRobin(subscriber), values.length),
                  `fresh rr round ${round}`
                ).toEqual(values)
                const long = yield* pickAll(longRR, values.length)
                expect([...long].sort(), `long rr round ${round}`).toEqual([...values].sort())
              }
              // scopes: the closer (a fiber of its own, started at the publish) closes the ones that left
              const wantOpen = values.filter((v) => v.startsWith("s")).sort()
              for (let i = 0; i < 100 && JSON.stringify([...open].sort()) !== JSON.stringify(wantOpen); i++) {
                yield* Effect.yieldNow()
              }
              expect([...open].sort(), `open scopes round ${round}`).toEqual(wantOpen)
            })
          yield* check(-1)
          for (let round = 0; round < 120; round++) {
            const events: Array<EtcdClient.WatchEvent> = []
            const count = random() < 0.3 ? 1 : 1 + Math.floor(random() * 30)
            const wide = random() < 0.7
            const base = Math.floor(random() * 400)
            for (let c = 0; c < count; c++) {
              const i = wide ? Math.floor(random() * 420) : base + Math.floor(random() * 8)
              const k = name(i)
              const r = random()
              const deleting = round % 40 < 12 ? r < 0.85 : r < 0.35
              if (deleting) {
                model.delete(k)
                events.push({ _tag: "Delete", key: k, revision: ++revision })
              } else {
                // sometimes the same value again
                const v = model.has(k) && random() < 0.2 ? model.get(k)! : newValue()
                model.set(k, v)
                events.push({ _tag: "Put", key: k, value: v, malformed: false, revision: ++revision, lease: undefined })
              }
            }
            if (direct) {
              for (const ev of events) {
                if (ev._tag === "Delete") yield* memory.client.delete(ev.key)
                else if (ev._tag === "Put") yield* memory.client.put(ev.key, ev.value)
              }
            } else yield* Queue.offerAll(queue, events)
            yield* check(round)
          }
        }).pipe(
          Effect.scoped,
          Effect.provide(EtcdClient.layerMemory),
          Effect.provide(Logger.remove(Logger.defaultLogger))
        )
    )
  }
})

describe("the balancers' view of a subscriber across transitions", () => {
  const valueFactory: Factory<void, string> = (value) => Effect.succeed(() => Effect.succeed(value))
  const pick = <BE>(b: Balancer.Balancer<void, string, never, BE>) => Effect.flatMap(b, (e) => e())

  it.effect("invalidation, relist while failing, recovery, and close", () =>
    Effect.gen(function* () {
      const memory = yield* EtcdClient.MemoryEtcd
      yield* memory.client.put("/svc/a", "a")
      const subscriber = yield* Subscriber.make({
        prefix: "/svc/",
        factory: valueFactory,
        invalidateOnError: "30 seconds",
        reconnect: Schedule.spaced("10 seconds"),
        retryList: Schedule.spaced("10 seconds")
      }).pipe(Effect.provide(Logger.remove(Logger.defaultLogger)))
      const rr = Balancer.roundRobin(subscriber)
      const rnd = Balancer.random(subscriber)
      expect(yield* pick(rr)).toBe("a")
      expect(yield* pick(rnd)).toBe("a")
      yield* memory.setUnavailable
      yield* waitFor(subscriber.state, (s) => s._tag === "Failing", "Failing")
      expect(yield* pick(rr)).toBe("a")
      // changes while down
      yield* memory.client.put("/svc/b", "b")
      yield* memory.client.delete("/svc/a")
      yield* TestClock.adjust("31 seconds")
      yield* waitFor(subscriber.endpointSet, (s) => Option.isSome(s.error), "invalidation")
      expect((yield* Effect.flip(pick(rr)))._tag).toBe("EtcdError")
      expect((yield* Effect.flip(pick(rnd)))._tag).toBe("EtcdError")
      yield* memory.restore
      yield* TestClock.adjust("1 minute")
      yield* waitFor(subscriber.state, (s) => s._tag === "Live", "Live")
      yield* waitFor(subscriber.instances, (m) => m.get("/svc/b") === "b" && !m.has("/svc/a"), "b only")
      expect(yield* Effect.flatMap(subscriber.endpoints, (es) => Effect.forEach(es, (e) => e()))).toEqual(["b"])
      expect(yield* pick(rr)).toBe("b")
      expect(yield* pick(rnd)).toBe("b")
    }).pipe(Effect.scoped, Effect.provide(EtcdClient.layerMemory))
  )
})

describe("the balancers' view of a closed subscriber", () => {
  it.effect("a balancer that picked before close fails after it", () =>
    Effect.gen(function* () {
      const memory = yield* EtcdClient.MemoryEtcd
      yield* memory.client.put("/svc/a", "a")
      for (let i = 0; i < 200; i++) yield* memory.client.put(`/svc/m${String(i).padStart(3, "0")}`, `m${i}`)
      const factory: Factory<void, string> = (value) => Effect.succeed(() => Effect.succeed(value))
      const [rr, rnd] = yield* Effect.scoped(
        Effect.gen(function* () {
          const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory })
          const rr = Balancer.roundRobin(subscriber)
          const rnd = Balancer.random(subscriber)
          yield* rr
          yield* rnd
          return [rr, rnd] as const
        })
      )
      expect((yield* Effect.flip(rr))._tag).toBe("EtcdError")
      expect((yield* Effect.flip(rnd))._tag).toBe("EtcdError")
    }).pipe(Effect.scoped, Effect.provide(EtcdClient.layerMemory))
  )
})

describe("the balancers' view after a relist", () => {
  it.effect("a relist after compaction (invalidated meanwhile): balancers pick from the relisted set", () =>
    Effect.gen(function* () {
      const memory = yield* EtcdClient.MemoryEtcd
      for (let i = 0; i < 200; i++) yield* memory.client.put(name(i), `a${i}`)
      const factory: Factory<void, string> = (value) => Effect.succeed(() => Effect.succeed(value))
      const subscriber = yield* Subscriber.make({
        prefix: "/svc/",
        factory,
        invalidateOnError: "30 seconds",
        reconnect: Schedule.spaced("10 seconds"),
        retryList: Schedule.spaced("10 seconds")
      }).pipe(Effect.provide(Logger.remove(Logger.defaultLogger)))
      const rr = Balancer.roundRobin(subscriber)
      const pick = Effect.flatMap(rr, (e) => e())
      expect(yield* pick).toBe("a0")
      yield* memory.setUnavailable
      yield* waitFor(subscriber.state, (s) => s._tag === "Failing", "Failing")
      for (let i = 0; i < 200; i += 3) yield* memory.client.delete(name(i))
      for (let i = 0; i < 200; i += 5) yield* memory.client.put(name(i), `b${i}`)
      const revision = yield* memory.client.put(name(999), "z")
      yield* memory.client.compact(revision)
      yield* TestClock.adjust("31 seconds")
      yield* waitFor(subscriber.endpointSet, (s) => Option.isSome(s.error), "invalidation")
      expect((yield* Effect.flip(pick))._tag).toBe("EtcdError")
      yield* memory.restore
      yield* TestClock.adjust("1 minute")
      yield* waitFor(subscriber.instances, (m) => m.get(name(999)) === "z", "relisted")
      yield* waitFor(subscriber.state, (s) => s._tag === "Live", "Live")
      const values = yield* Effect.flatMap(subscriber.endpoints, (es) => Effect.forEach(es, (e) => e()))
      const fresh = Balancer.roundRobin(subscriber)
      const picked = yield* Effect.forEach(values, () => Effect.flatMap(fresh, (e) => e()))
      expect(picked).toEqual(values)
      const long = yield* Effect.forEach(values, () => pick)
      expect([...long].sort()).toEqual([...values].sort())
    }).pipe(Effect.scoped, Effect.provide(EtcdClient.layerMemory))
  )
})
