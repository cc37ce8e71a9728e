/**
 * The Subscriber against the in-memory etcd, time driven by TestClock.
 */
import { describe, expect, it } from "@effect/vitest"
import { inspect } from "node:util"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as HashMap from "effect/HashMap"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import type * as Subscribable from "effect/Subscribable"
import * as TestClock from "effect/TestClock"
import * as TestServices from "effect/TestServices"
import * as Balancer from "../src/Balancer.js"
import type { Factory } from "../src/Endpoint.js"
import * as EtcdClient from "../src/EtcdClient.js"
import type { EtcdError } from "../src/EtcdError.js"
import * as Retry from "../src/Retry.js"
import * as Subscriber from "../src/Subscriber.js"

// ---- helpers ----

/** Waits (on the subscribable's changes, never on a sleep) until `predicate` holds; 10 s of real time at most. */
const waitFor = <A>(subscribable: Subscribable.Subscribable<A>, predicate: (a: A) => boolean, what: string) =>
  TestServices.provideWithLive(
    Effect.flatMap(Stream.runHead(Stream.filter(subscribable.changes, predicate)), (a) =>
      Option.isSome(a) ? Effect.succeed(a.value) : Effect.dieMessage(`changes ended before ${what}`)
    ),
    (effect) =>
      Effect.timeoutFail(effect, {
        duration: "10 seconds",
        onTimeout: () => new Error(`timed out waiting for ${what}`)
      }).pipe(Effect.orDie)
  )

const instancesOf = (subscriber: Subscriber.Subscriber<string, string>) =>
  Effect.map(subscriber.instances.get, (m) => Object.fromEntries(m))

const waitForInstances = (subscriber: Subscriber.Subscriber<string, string>, expected: Record<string, string>) =>
  waitFor(
    subscriber.instances,
    (m) => JSON.stringify(Object.fromEntries(m)) === JSON.stringify(expected),
    `instances ${JSON.stringify(expected)}`
  )

/** Calls every current endpoint with "ping": what a user of the endpoints sees. */
const callAll = (subscriber: Subscriber.Subscriber<string, string>) =>
  Effect.flatMap(subscriber.endpoints, (endpoints) => Effect.forEach(endpoints, (endpoint) => endpoint("ping")))

/** A factory that records every endpoint made and every endpoint scope closed. */
const recordingFactory = Effect.gen(function* () {
  const made = yield* Ref.make<ReadonlyArray<string>>([])
  const closed = yield* Ref.make<ReadonlyArray<string>>([])
  const factory: Factory<string, string> = (instance) =>
    Effect.gen(function* () {
      yield* Ref.update(made, (xs) => [...xs, instance])
      yield* Effect.addFinalizer(() => Ref.update(closed, (xs) => [...xs, instance]))
      return (request: string) => Effect.succeed(`${instance} got ${request}`)
    })
  return { factory, made: Ref.get(made), closed: Ref.get(closed) }
})

/** A logger that keeps what is logged (first message part, `key` annotation, level). */
const capturingLogger = () => {
  const logs: Array<{ readonly message: unknown; readonly key: unknown; readonly level: string }> = []
  const logger = Logger.make(({ annotations, logLevel, message }) => {
    logs.push({
      message: Array.isArray(message) ? message[0] : message,
      key: Option.getOrUndefined(HashMap.get(annotations, "key")),
      level: logLevel.label
    })
  })
  return { logs, layer: Logger.replace(Logger.defaultLogger, logger) }
}

/** Runs a test body on a fresh in-memory etcd; the body's scope closes before the store's. */
const onMemory = <A, E>(
  body: Effect.Effect<A, E, EtcdClient.EtcdClient | EtcdClient.MemoryEtcdControl | Scope.Scope>
) => Effect.scoped(body).pipe(Effect.provide(EtcdClient.layerMemory))

const put = (key: string, value: string) => Effect.flatMap(EtcdClient.MemoryEtcd, (m) => m.client.put(key, value))
const del = (key: string) => Effect.flatMap(EtcdClient.MemoryEtcd, (m) => m.client.delete(key))

const spaced10s = Schedule.spaced("10 seconds")

/** `client` with a watch that delivers `events` as one batch once `open` has run, then nothing. */
const batchedWatch = (client: EtcdClient.EtcdClient, events: ReadonlyArray<EtcdClient.WatchEvent>) =>
  Effect.map(Deferred.make<void>(), (gate) => ({
    client: {
      ...client,
      watch: () =>
        Stream.drain(Stream.fromEffect(Deferred.await(gate))).pipe(
          Stream.concat(Stream.fromChunk(Chunk.unsafeFromArray(events))),
          Stream.concat(Stream.never)
        )
    } satisfies EtcdClient.EtcdClient,
    open: Deferred.succeed(gate, undefined)
  }))

describe("Subscriber (in-memory etcd)", () => {
  it.effect("lists the instances, then follows puts and deletes; endpoints come in key order", () =>
    onMemory(
      Effect.gen(function* () {
        yield* put("/svc/b", "http://b")
        yield* put("/svc/a", "http://a")
        const { factory } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix: "/svc", factory })
        expect(subscriber.prefix).toBe("/svc/")
        expect(yield* instancesOf(subscriber)).toEqual({ "/svc/a": "http://a", "/svc/b": "http://b" })
        expect(yield* callAll(subscriber)).toEqual(["http://a got ping", "http://b got ping"])
        expect((yield* subscriber.state.get)._tag).toBe("Live")

        yield* put("/svc/c", "http://c")
        yield* del("/svc/a")
        yield* waitForInstances(subscriber, { "/svc/b": "http://b", "/svc/c": "http://c" })
        expect(yield* callAll(subscriber)).toEqual(["http://b got ping", "http://c got ping"])
        expect((yield* subscriber.endpointSet.get).keys).toEqual(["/svc/b", "/svc/c"])
      })
    )
  )

  it.effect("a client wrapped by a prototype or a proxy that replaces watch: that watch is the one followed", () =>
    onMemory(
      Effect.gen(function* () {
        const client = yield* EtcdClient.EtcdClient
        const watched: Array<string> = []
        const watch: EtcdClient.EtcdClient["watch"] = (prefix, options) => {
          watched.push(prefix)
          return client.watch(prefix, options)
        }
        const byPrototype: EtcdClient.EtcdClient = Object.assign(Object.create(client) as EtcdClient.EtcdClient, {
          watch
        })
        const byProxy = new Proxy(client, {
          get: (target, property, receiver) => (property === "watch" ? watch : Reflect.get(target, property, receiver))
        })
        const { factory } = yield* recordingFactory
        for (const [name, wrapper] of [
          ["prototype", byPrototype],
          ["proxy", byProxy]
        ] as const) {
          watched.length = 0
          const subscriber = yield* Subscriber.make({ prefix: `/svc/${name}/`, factory }).pipe(
            Effect.provideService(EtcdClient.EtcdClient, wrapper)
          )
          yield* put(`/svc/${name}/a`, "http://a")
          yield* waitForInstances(subscriber, { [`/svc/${name}/a`]: "http://a" })
          expect(watched).toEqual([`/svc/${name}/`])
        }
      })
    )
  )

  it.effect(
    "an endpoint set reads as plain data: a spread copy, toEqual and JSON see size, endpoints, keys, error",
    () =>
      onMemory(
        Effect.gen(function* () {
          yield* put("/svc/a", "http://a")
          yield* put("/svc/b", "bad")
          const endpoint = (_: string) => Effect.succeed("a")
          const factory: Factory<string, string, never, string> = (instance) =>
            instance === "bad" ? Effect.fail("bad") : Effect.succeed(endpoint)
          const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory }).pipe(
            Effect.provide(Logger.remove(Logger.defaultLogger))
          )
          const set = yield* subscriber.endpointSet.get
          const plain = { size: 1, endpoints: [endpoint], keys: ["/svc/a"], error: Option.none() }
          expect({ ...set }).toEqual(plain)
          expect(set).toEqual(plain)
          expect(Object.keys(set).sort()).toEqual(["endpoints", "error", "keys", "size"])
          // Node's inspect (console.log, Logger.pretty) shows the arrays, not `[Getter]`
          expect(inspect(set)).toBe(inspect(plain))
          expect(JSON.parse(JSON.stringify({ ...set, endpoints: set.endpoints.length }))).toEqual({
            size: 1,
            endpoints: 1,
            keys: ["/svc/a"],
            error: { _id: "Option", _tag: "None" }
          })
        })
      )
  )

  it.effect("once its scope is closed, a subscriber hands out no endpoint: taking them fails with a typed error", () =>
    onMemory(
      Effect.gen(function* () {
        yield* put("/svc/a", "http://a")
        const { factory } = yield* recordingFactory
        const subscriber = yield* Effect.scoped(
          Effect.gen(function* () {
            const subscriber = yield* Subscriber.make({ prefix: "/svc", factory })
            expect(yield* callAll(subscriber)).toEqual(["http://a got ping"])
            return subscriber
          })
        )
        // the endpoint's scope is closed now: handing it out would be a use after release
        const error = yield* Effect.flip(subscriber.endpoints)
        expect(error).toMatchObject({ _tag: "EtcdError", reason: "Canceled" })
        expect(error.message).toContain("the subscriber of /svc/ is closed")
        expect(yield* Effect.flip(Balancer.roundRobin(subscriber))).toEqual(error)
        expect((yield* subscriber.instances.get).size).toBe(0)
        expect((yield* subscriber.endpointSet.get).endpoints).toEqual([])
      })
    )
  )

  it.effect(
    "a scope closed before the first listing is applied: make is interrupted, the endpoints made are closed",
    () =>
      onMemory(
        Effect.gen(function* () {
          yield* put("/svc/a", "http://a")
          yield* put("/svc/b", "http://b")
          const closed = yield* Ref.make<ReadonlyArray<string>>([])
          const making = yield* Deferred.make<void>()
          // a's endpoint is made; b's factory is still running when the scope closes
          const factory: Factory<string, string> = (instance) =>
            Effect.gen(function* () {
              yield* Effect.addFinalizer(() => Ref.update(closed, (xs) => [...xs, instance]))
              if (instance === "http://b") yield* Effect.zipRight(Deferred.succeed(making, undefined), Effect.never)
              return (request: string) => Effect.succeed(`${instance} got ${request}`)
            })
          const scope = yield* Scope.make()
          const fiber = yield* Effect.fork(Scope.extend(Subscriber.make({ prefix: "/svc", factory }), scope))
          yield* Deferred.await(making)
          yield* Scope.close(scope, Exit.void)
          const exit = yield* TestServices.provideWithLive(Fiber.await(fiber), (effect) =>
            Effect.timeoutFail(effect, {
              duration: "10 seconds",
              onTimeout: () => new Error("Subscriber.make did not end after its scope was closed")
            }).pipe(Effect.orDie)
          )
          expect(Exit.isInterrupted(exit)).toBe(true)
          expect([...(yield* Ref.get(closed))].sort()).toEqual(["http://a", "http://b"])
          // a scope closed before make runs: the same
          const late = yield* TestServices.provideWithLive(
            Effect.exit(Scope.extend(Subscriber.make({ prefix: "/svc", factory }), scope)),
            (effect) =>
              Effect.timeoutFail(effect, {
                duration: "10 seconds",
                onTimeout: () => new Error("Subscriber.make did not end in a closed scope")
              }).pipe(Effect.orDie)
          )
          expect(Exit.isInterrupted(late)).toBe(true)
        })
      )
  )

  it.effect("the prefix is normalised: /services/bar never sees /services/barsvc2/...", () =>
    onMemory(
      Effect.gen(function* () {
        yield* put("/services/bar/1", "bar-1")
        yield* put("/services/barsvc2/1", "barsvc2-1")
        yield* put("/services/bar", "the prefix key itself")
        const { factory, made } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix: "/services/bar", factory })
        yield* put("/services/barsvc2/2", "barsvc2-2")
        yield* put("/services/bar/2", "bar-2")
        yield* waitForInstances(subscriber, { "/services/bar/1": "bar-1", "/services/bar/2": "bar-2" })
        expect(yield* made).toEqual(["bar-1", "bar-2"])
      })
    )
  )

  it.effect("an endpoint is made once per instance; its scope closes once when it leaves or its value changes", () =>
    onMemory(
      Effect.gen(function* () {
        yield* put("/svc/1", "v1")
        yield* put("/svc/2", "v2")
        const { closed, factory, made } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory })
        yield* put("/svc/2", "v2") // same value again: nothing to do
        yield* put("/svc/1", "v1-new")
        yield* del("/svc/2")
        yield* waitForInstances(subscriber, { "/svc/1": "v1-new" })
        expect(yield* made).toEqual(["v1", "v2", "v1-new"])
        expect(yield* closed).toEqual(["v1", "v2"])
        expect(yield* callAll(subscriber)).toEqual(["v1-new got ping"])
      })
    )
  )

  it.effect("a failing factory (typed failure or defect) logs and skips that instance", () =>
    Effect.gen(function* () {
      const { layer, logs } = capturingLogger()
      yield* onMemory(
        Effect.gen(function* () {
          yield* put("/svc/good", "good")
          yield* put("/svc/typed", "typed")
          yield* put("/svc/defect", "defect")
          const factory: Factory<string, string, never, string> = (instance) =>
            instance === "typed"
              ? Effect.fail("cannot reach it")
              : instance === "defect"
                ? Effect.die(new Error("bug in the factory"))
                : Effect.succeed((request: string) => Effect.succeed(`${instance} got ${request}`))
          const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory })
          expect(yield* callAll(subscriber)).toEqual(["good got ping"])
          // the instances are there; only their endpoints are missing
          expect(Object.keys(yield* instancesOf(subscriber))).toEqual(["/svc/defect", "/svc/good", "/svc/typed"])
        })
      ).pipe(Effect.provide(layer))
      const failures = logs.filter((l) => l.message === "endpoint factory failed; instance skipped")
      expect(failures.map((l) => [l.level, l.key])).toEqual([
        ["WARN", "/svc/defect"],
        ["WARN", "/svc/typed"]
      ])
    })
  )

  it.effect(
    "factories of every shape in one batch: results, sync thunks, throws and scoped effects, in key order",
    () =>
      Effect.gen(function* () {
        const { layer, logs } = capturingLogger()
        const closed: Array<string> = []
        yield* onMemory(
          Effect.gen(function* () {
            // succeed, sync, a sync that throws, a factory that throws, a scoped gen, a fail, in key order
            const shapes = ["a-succeed", "b-sync", "c-sync-throws", "d-throws", "e-scoped", "f-fail", "g-sync"]
            for (const shape of shapes) yield* put(`/svc/${shape}`, shape)
            const endpoint = (instance: string) => (request: string) => Effect.succeed(`${instance} got ${request}`)
            const factory: Factory<string, string, never, string> = (instance) => {
              if (instance.endsWith("-succeed")) return Effect.succeed(endpoint(instance))
              if (instance.endsWith("-sync")) return Effect.sync(() => endpoint(instance))
              if (instance.endsWith("c-sync-throws"))
                return Effect.sync(() => {
                  throw new Error("thrown in a sync factory")
                })
              if (instance.endsWith("d-throws")) throw new Error("thrown before any effect")
              if (instance.endsWith("f-fail")) return Effect.fail("cannot reach it")
              return Effect.gen(function* () {
                yield* Effect.addFinalizer(() => Effect.sync(() => closed.push(instance)))
                return endpoint(instance)
              })
            }
            const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory })
            expect(yield* callAll(subscriber)).toEqual([
              "a-succeed got ping",
              "b-sync got ping",
              "e-scoped got ping",
              "g-sync got ping"
            ])
            // the same shapes again, as one watch batch
            for (const shape of shapes) yield* put(`/svc/x${shape}`, `x${shape}`)
            yield* waitFor(subscriber.instances, (m) => m.size === 14, "the second batch")
            expect(yield* callAll(subscriber)).toEqual([
              "a-succeed got ping",
              "b-sync got ping",
              "e-scoped got ping",
              "g-sync got ping",
              "xa-succeed got ping",
              "xb-sync got ping",
              "xe-scoped got ping",
              "xg-sync got ping"
            ])
            // the scoped endpoint's scope closes when its instance leaves; the others had none
            yield* del("/svc/e-scoped")
            yield* del("/svc/b-sync")
            yield* waitFor(subscriber.instances, (m) => m.size === 12, "the deletes")
            expect(closed).toEqual(["e-scoped"])
          })
        ).pipe(Effect.provide(layer))
        // ... and the other when the subscriber closes
        expect(closed).toEqual(["e-scoped", "xe-scoped"])
        const failures = logs.filter((l) => l.message === "endpoint factory failed; instance skipped")
        expect(failures.map((l) => l.key)).toEqual([
          "/svc/c-sync-throws",
          "/svc/d-throws",
          "/svc/f-fail",
          "/svc/xc-sync-throws",
          "/svc/xd-throws",
          "/svc/xf-fail"
        ])
      })
  )

  it.effect(
    "a large batch of changes (new, changed, deleted, failing) is applied at once, as one change after another would be",
    () =>
      onMemory(
        Effect.gen(function* () {
          const memory = yield* EtcdClient.MemoryEtcd
          const name = (i: number) => `/svc/${String(i).padStart(3, "0")}`
          for (let i = 0; i < 60; i++) yield* put(name(i), `v${i}`)
          const listed = yield* memory.client.revision
          // one watch batch of 100 changes, out of key order: 40 new instances (one failing, and one
          // deleted again in the same batch), 20 changed values, 20 deletes, a delete of an unknown key
          const events: Array<EtcdClient.WatchEvent> = []
          let revision = listed
          const putEvent = (key: string, value: string): EtcdClient.WatchEvent => ({
            _tag: "Put",
            key,
            value,
            malformed: false,
            revision: ++revision,
            lease: undefined
          })
          for (let i = 99; i >= 60; i--) events.push(putEvent(name(i), i === 70 ? "fail" : `v${i}`))
          for (let i = 0; i < 20; i++) events.push(putEvent(name(i * 3), `changed${i * 3}`))
          for (let i = 0; i < 20; i++) events.push({ _tag: "Delete", key: name(i * 3 + 1), revision: ++revision })
          events.push({ _tag: "Delete", key: name(80), revision: ++revision })
          events.push({ _tag: "Delete", key: "/svc/unknown", revision: ++revision })
          const batched = yield* batchedWatch(memory.client, events)
          const made = yield* Ref.make<ReadonlyArray<string>>([])
          const closed = yield* Ref.make<ReadonlyArray<string>>([])
          const factory: Factory<string, string, never, string> = (instance) =>
            instance === "fail"
              ? Effect.fail("no endpoint for this one")
              : Effect.gen(function* () {
                  yield* Ref.update(made, (xs) => [...xs, instance])
                  yield* Effect.addFinalizer(() => Ref.update(closed, (xs) => [...xs, instance]))
                  return (request: string) => Effect.succeed(`${instance} got ${request}`)
                })
          const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory }).pipe(
            Effect.provideService(EtcdClient.EtcdClient, batched.client)
          )
          const before = yield* subscriber.endpointSet.get
          expect(before.keys.length).toBe(60)
          // every endpoint set published is the one before or the one after the batch
          const seen = yield* Ref.make<ReadonlyArray<number>>([])
          yield* Effect.forkScoped(
            Stream.runForEach(subscriber.endpointSet.changes, (set) =>
              Ref.update(seen, (xs) => [...xs, set.keys.length])
            )
          )
          yield* batched.open
          const expected: Record<string, string> = {}
          for (let i = 0; i < 100; i++) {
            if (i < 60 && i % 3 === 1) continue
            if (i === 80) continue
            expected[name(i)] = i < 60 && i % 3 === 0 ? `changed${i}` : i === 70 ? "fail" : `v${i}`
          }
          yield* waitForInstances(subscriber, expected)
          const after = yield* subscriber.endpointSet.get
          const withEndpoints = Object.keys(expected).filter((key) => key !== name(70))
          expect(after.keys).toEqual(withEndpoints)
          expect(yield* callAll(subscriber)).toEqual(withEndpoints.map((key) => `${expected[key]} got ping`))
          // the endpoints of changed and deleted instances are closed, each once; an instance that
          // came and went within the batch had no endpoint made
          const gone = [
            ...Array.from({ length: 20 }, (_, i) => `v${i * 3}`),
            ...Array.from({ length: 20 }, (_, i) => `v${i * 3 + 1}`)
          ]
          expect([...(yield* closed)].sort()).toEqual(gone.sort())
          expect((yield* made).length).toBe(60 + 38 + 20)
          yield* waitFor(subscriber.endpointSet, (set) => set.keys.length === withEndpoints.length, "the batch")
          expect((yield* Ref.get(seen)).every((n) => n === 60 || n === withEndpoints.length)).toBe(true)
        })
      )
  )

  it.effect("a batch of thousands of changes, each between two known instances, is applied in key order", () =>
    onMemory(
      Effect.gen(function* () {
        const memory = yield* EtcdClient.MemoryEtcd
        // known: /svc/00000, /svc/00002, ...; the batch puts every odd name and deletes every fourth known
        const name = (i: number) => `/svc/${String(i).padStart(5, "0")}`
        const known = 3000
        for (let i = 0; i < known; i++) yield* put(name(2 * i), "known")
        let revision = yield* memory.client.revision
        const events: Array<EtcdClient.WatchEvent> = []
        for (let i = 0; i < known; i++) {
          events.push({
            _tag: "Put",
            key: name(2 * i + 1),
            value: "new",
            malformed: false,
            revision: ++revision,
            lease: undefined
          })
          if (i % 4 === 0) events.push({ _tag: "Delete", key: name(2 * i), revision: ++revision })
        }
        const batched = yield* batchedWatch(memory.client, events)
        const factory: Factory<string, string> = (instance) =>
          Effect.succeed((request: string) => Effect.succeed(`${instance} got ${request}`))
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, batched.client)
        )
        yield* batched.open
        const expected: Array<string> = []
        for (let i = 0; i < 2 * known; i++) if (i % 2 === 1 || (i / 2) % 4 !== 0) expected.push(name(i))
        const set = yield* waitFor(subscriber.endpointSet, (set) => set.keys.length === expected.length, "the batch")
        expect(set.keys).toEqual(expected)
        const instances = yield* subscriber.instances.get
        expect([...instances.keys()]).toEqual(expected)
        expect(instances.get(name(1))).toBe("new")
        expect(instances.get(name(2))).toBe("known")
        expect(instances.has(name(0))).toBe(false)
      })
    )
  )

  it.effect(
    "random batches of puts and deletes: the view always equals etcd's, and a snapshot read earlier never changes",
    () =>
      onMemory(
        Effect.gen(function* () {
          const memory = yield* EtcdClient.MemoryEtcd
          // a deterministic PRNG (mulberry32), so that a failure replays
          let seed = 7
          const random = () => {
            seed = (seed + 0x6d2b79f5) | 0
            let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
            t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
            return ((t ^ (t >>> 14)) >>> 0) / 4294967296
          }
          const name = (i: number) => `/svc/${String(i).padStart(4, "0")}`
          // the model: what etcd holds; values starting with "bad" make the factory fail
          const model = new Map<string, string>()
          for (let i = 0; i < 200; i += 2) {
            yield* put(name(i), `v${i}`)
            model.set(name(i), `v${i}`)
          }
          let revision = yield* memory.client.revision
          const batches = yield* Queue.unbounded<ReadonlyArray<EtcdClient.WatchEvent>>()
          const client: EtcdClient.EtcdClient = {
            ...memory.client,
            watch: () => Stream.repeatEffectChunk(Effect.map(Queue.take(batches), Chunk.unsafeFromArray))
          }
          const factory: Factory<string, string, never, string> = (instance) =>
            instance.startsWith("bad")
              ? Effect.fail("bad instance")
              : Effect.succeed((request: string) => Effect.succeed(`${instance} got ${request}`))
          const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory }).pipe(
            Effect.provideService(EtcdClient.EtcdClient, client),
            Effect.provide(Logger.remove(Logger.defaultLogger))
          )
          const sorted = () => [...model.entries()].sort(([a], [b]) => (a < b ? -1 : 1))
          const good = () => sorted().filter(([, value]) => !value.startsWith("bad"))
          const randomBatch = (marker: string) => {
            const events: Array<EtcdClient.WatchEvent> = []
            const size = 1 + Math.floor(random() * 40)
            for (let e = 0; e < size; e++) {
              // keys 0..239: some known, some new, some past the last known one
              const key = name(Math.floor(random() * 240))
              const roll = random()
              if (roll < 0.45) {
                model.delete(key)
                events.push({ _tag: "Delete", key, revision: ++revision })
              } else {
                const value = roll < 0.55 ? `bad${revision}` : `v${revision}`
                model.set(key, value)
                events.push({ _tag: "Put", key, value, malformed: false, revision: ++revision, lease: undefined })
              }
            }
            model.set("/svc/zz-marker", marker)
            events.push({
              _tag: "Put",
              key: "/svc/zz-marker",
              value: marker,
              malformed: false,
              revision: ++revision,
              lease: undefined
            })
            return events
          }
          /** What the last endpoint (the marker's, last in key order) answers. */
          const lastCalled = (set: Subscriber.EndpointSet<string, string>) =>
            set.endpoints.length === 0 ? undefined : Effect.runSync(set.endpoints[set.endpoints.length - 1]!("ping"))
          for (let round = 0; round < 60; round++) {
            // every third round, snapshots taken before the batches, with what they held. Every sixth,
            // only the endpoint set, after a batch that only it has seen (the instances, read at the end
            // of every round, share the keys too)
            let before:
              | {
                  readonly set: Subscriber.EndpointSet<string, string>
                  readonly instances: ReadonlyMap<string, string> | undefined
                }
              | undefined = undefined
            if (round % 6 === 0) {
              yield* Queue.offer(batches, randomBatch(`p${round}`))
              const set = yield* waitFor(
                subscriber.endpointSet,
                (set) => lastCalled(set) === `p${round} got ping`,
                `batch p${round}`
              )
              before = { set, instances: undefined }
            } else if (round % 6 === 3) {
              before = { set: yield* subscriber.endpointSet.get, instances: yield* subscriber.instances.get }
            }
            // what the snapshots held, from the model: their arrays (built on first read) and lookups
            // are read only after the later batches, so a batch that changed what they share shows
            const held = before === undefined ? undefined : { good: good(), sorted: sorted() }
            // 1 to 3 batches offered at once: those after the first are applied with no read in between,
            // unless the test's read below comes first
            const count = 1 + (round % 3)
            let marker = ""
            for (let b = 0; b < count; b++) {
              marker = `m${round}.${b}`
              yield* Queue.offer(batches, randomBatch(marker))
            }
            // even rounds wait on the endpoint set, odd ones on the instances: each read shares other arrays
            const set = yield* round % 2 === 0
              ? waitFor(subscriber.endpointSet, (set) => lastCalled(set) === `${marker} got ping`, `batch ${marker}`)
              : Effect.zipRight(
                  waitFor(subscriber.instances, (m) => m.get("/svc/zz-marker") === marker, `batch ${marker}`),
                  subscriber.endpointSet.get
                )
            expect([...(yield* subscriber.instances.get).entries()]).toEqual(sorted())
            expect(set.size).toBe(good().length)
            expect(set.keys).toEqual(good().map(([key]) => key))
            expect(yield* Effect.forEach(set.endpoints, (endpoint) => endpoint("ping"))).toEqual(
              good().map(([, value]) => `${value} got ping`)
            )
            if (before !== undefined && held !== undefined) {
              expect(before.set.size).toBe(held.good.length)
              expect(before.set.keys).toEqual(held.good.map(([key]) => key))
              expect(yield* Effect.forEach(before.set.endpoints, (endpoint) => endpoint("ping"))).toEqual(
                held.good.map(([, value]) => `${value} got ping`)
              )
              if (before.instances !== undefined) {
                const instances = before.instances
                expect(instances.size).toBe(held.sorted.length)
                for (const [key, value] of held.sorted) expect(instances.get(key)).toBe(value)
                expect([...instances.entries()]).toEqual(held.sorted)
              }
            }
          }
        })
      )
  )

  it.effect("values that are not valid UTF-8 are logged and skipped", () => {
    const { layer, logs } = capturingLogger()
    return onMemory(
      Effect.gen(function* () {
        const memory = yield* EtcdClient.MemoryEtcd
        yield* put("/svc/ok", "ok")
        // etcd hands back values whose bytes are not UTF-8 (the memory store only holds strings):
        // one in the listing, and every put of "BAD" in the watch
        const withMalformed: EtcdClient.EtcdClient = {
          ...memory.client,
          watch: (prefix, options) =>
            Stream.map(memory.client.watch(prefix, options), (event) =>
              event._tag === "Put" && event.value === "BAD" ? { ...event, value: "\uFFFD", malformed: true } : event
            ),
          list: (prefix) =>
            Effect.map(memory.client.list(prefix), (listing) => ({
              ...listing,
              entries: [
                ...listing.entries,
                {
                  key: "/svc/zz-bad",
                  value: "\uFFFD\uFFFD",
                  malformed: true,
                  createRevision: 1,
                  modRevision: 1,
                  lease: undefined
                }
              ]
            }))
        }
        const { closed, factory, made } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, withMalformed)
        )
        expect(yield* instancesOf(subscriber)).toEqual({ "/svc/ok": "ok" })
        expect(yield* made).toEqual(["ok"])
        // a known instance whose value turns malformed leaves: its endpoint is closed
        yield* put("/svc/other", "other")
        yield* put("/svc/ok", "BAD")
        yield* waitForInstances(subscriber, { "/svc/other": "other" })
        expect(yield* made).toEqual(["ok", "other"])
        expect(yield* closed).toEqual(["ok"])
        const warned = logs.filter((l) => l.message === "value is not valid UTF-8; instance skipped")
        expect(warned.map((l) => [l.level, l.key])).toEqual([
          ["WARN", "/svc/zz-bad"],
          ["WARN", "/svc/ok"]
        ])
      })
    ).pipe(Effect.provide(layer))
  })

  it.effect("by default the last good set is served while etcd is unreachable", () =>
    onMemory(
      Effect.gen(function* () {
        const memory = yield* EtcdClient.MemoryEtcd
        yield* put("/svc/a", "a")
        const { factory } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory, reconnect: spaced10s })
        yield* memory.setUnavailable
        const failing = yield* waitFor(subscriber.state, (s) => s._tag === "Failing", "Failing")
        expect(failing._tag === "Failing" && failing.error.reason).toBe("Unavailable")
        yield* TestClock.adjust("5 minutes")
        expect(yield* callAll(subscriber)).toEqual(["a got ping"])
      })
    )
  )

  it.effect("invalidateOnError keeps the last set before the timeout, fails after it, and recovers", () =>
    onMemory(
      Effect.gen(function* () {
        const memory = yield* EtcdClient.MemoryEtcd
        yield* put("/svc/a", "a")
        yield* put("/svc/b", "b")
        const { factory } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({
          prefix: "/svc/",
          factory,
          invalidateOnError: "30 seconds",
          reconnect: spaced10s
        })
        const balancer = Balancer.roundRobin(subscriber)
        yield* memory.setUnavailable
        yield* waitFor(subscriber.state, (s) => s._tag === "Failing", "Failing")

        yield* TestClock.adjust("29 seconds")
        expect(yield* callAll(subscriber)).toEqual(["a got ping", "b got ping"])
        expect(yield* Effect.flatMap(balancer, (endpoint) => endpoint("x"))).toMatch(/got x$/)

        yield* TestClock.adjust("1 second")
        yield* waitFor(subscriber.endpointSet, (s) => Option.isSome(s.error), "invalidation")
        const error: EtcdError = yield* Effect.flip(subscriber.endpoints)
        expect(error._tag).toBe("EtcdError")
        expect(error.reason).toBe("Unavailable")
        const picked = yield* Effect.flip(balancer)
        expect(picked._tag).toBe("EtcdError")

        // the next good update ends it
        yield* memory.restore
        yield* TestClock.adjust("10 seconds")
        yield* waitFor(subscriber.state, (s) => s._tag === "Live", "Live")
        expect(yield* callAll(subscriber)).toEqual(["a got ping", "b got ping"])
      })
    )
  )

  it.effect("a disconnected watch reconnects on its schedule, resuming from the last revision", () =>
    onMemory(
      Effect.gen(function* () {
        const memory = yield* EtcdClient.MemoryEtcd
        yield* put("/svc/a", "a")
        const { factory, made } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory, reconnect: spaced10s })
        yield* memory.setUnavailable
        yield* waitFor(subscriber.state, (s) => s._tag === "Failing", "Failing")
        // changes made while the subscriber cannot see them
        yield* put("/svc/b", "b")
        yield* del("/svc/a")

        yield* TestClock.adjust("10 seconds") // first attempt: still down
        yield* memory.restore
        yield* TestClock.adjust("9 seconds")
        expect((yield* subscriber.state.get)._tag).toBe("Failing")
        expect(yield* instancesOf(subscriber)).toEqual({ "/svc/a": "a" })

        yield* TestClock.adjust("1 second") // second attempt, on schedule: up
        yield* waitFor(subscriber.state, (s) => s._tag === "Live", "Live")
        yield* waitForInstances(subscriber, { "/svc/b": "b" })
        expect(yield* made).toEqual(["a", "b"])
      })
    )
  )

  it.effect("a failing list is retried on its schedule, forever, visible in the state", () =>
    onMemory(
      Effect.gen(function* () {
        const memory = yield* EtcdClient.MemoryEtcd
        yield* put("/svc/a", "a")
        yield* memory.setUnavailable
        const { factory } = yield* recordingFactory
        // returns after the first attempt, which failed
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory, retryList: Schedule.spaced("1 minute") })
        const state = yield* subscriber.state.get
        expect(state._tag).toBe("Failing")
        expect(yield* subscriber.endpoints).toEqual([])
        const since = state._tag === "Failing" ? state.since : -1

        yield* TestClock.adjust("10 minutes")
        const later = yield* subscriber.state.get
        expect(later._tag === "Failing" && later.since).toBe(since)

        yield* memory.restore
        yield* TestClock.adjust("1 minute")
        yield* waitFor(subscriber.state, (s) => s._tag === "Live", "Live")
        expect(yield* callAll(subscriber)).toEqual(["a got ping"])
      })
    )
  )

  it.effect("a watch behind a compaction lists again and applies the difference; unchanged endpoints are kept", () =>
    onMemory(
      Effect.gen(function* () {
        const memory = yield* EtcdClient.MemoryEtcd
        yield* put("/svc/stays", "stays")
        yield* put("/svc/leaves", "leaves")
        yield* put("/svc/changes", "old")
        // hold the subscriber's first watch until the history it needs is compacted away
        const gate = yield* Deferred.make<void>()
        const watches = yield* Ref.make(0)
        const gated: EtcdClient.EtcdClient = {
          ...memory.client,
          watch: (prefix, options) =>
            Stream.unwrap(
              Effect.map(
                Ref.getAndUpdate(watches, (n) => n + 1),
                (n) =>
                  n === 0
                    ? Stream.unwrap(Effect.as(Deferred.await(gate), memory.client.watch(prefix, options)))
                    : memory.client.watch(prefix, options)
              )
            )
        }
        const { closed, factory, made } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, gated)
        )
        yield* del("/svc/leaves")
        yield* put("/svc/changes", "new")
        const revision = yield* put("/svc/arrives", "arrives")
        yield* memory.client.compact(revision)
        yield* Deferred.succeed(gate, undefined)

        yield* waitForInstances(subscriber, { "/svc/arrives": "arrives", "/svc/changes": "new", "/svc/stays": "stays" })
        expect(yield* Ref.get(watches)).toBe(2)
        expect([...(yield* made)].sort()).toEqual(["arrives", "leaves", "new", "old", "stays"])
        expect([...(yield* closed)].sort()).toEqual(["leaves", "old"])
        expect((yield* subscriber.state.get)._tag).toBe("Live")
      })
    )
  )

  it.effect("disconnected while etcd writes and compacts: on reconnect it lists again and converges", () => {
    const { layer, logs } = capturingLogger()
    return onMemory(
      Effect.gen(function* () {
        const memory = yield* EtcdClient.MemoryEtcd
        yield* put("/svc/stays", "stays")
        yield* put("/svc/leaves", "leaves")
        yield* put("/svc/changes", "old")
        const { closed, factory, made } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory, reconnect: spaced10s })
        // the consumer is cut off; meanwhile etcd changes and compacts the history it would resume from
        yield* memory.setUnavailable
        yield* waitFor(subscriber.state, (s) => s._tag === "Failing", "Failing")
        yield* del("/svc/leaves")
        yield* put("/svc/changes", "new")
        const revision = yield* put("/svc/arrives", "arrives")
        yield* memory.client.compact(revision)
        yield* memory.restore
        yield* TestClock.adjust("10 seconds")

        yield* waitForInstances(subscriber, { "/svc/arrives": "arrives", "/svc/changes": "new", "/svc/stays": "stays" })
        yield* waitFor(subscriber.state, (s) => s._tag === "Live", "Live")
        expect([...(yield* made)].sort()).toEqual(["arrives", "leaves", "new", "old", "stays"])
        expect([...(yield* closed)].sort()).toEqual(["leaves", "old"])
        // it got there by listing again: the resumed watch was refused with Compacted
        const relisted = logs.filter((l) => String(l.message).startsWith("watch canceled; listing again"))
        expect(relisted.map((l) => String(l.message).includes("(Compacted)"))).toEqual([true])
      })
    ).pipe(Effect.provide(layer))
  })

  it.effect("a wiped cluster (revision gone backwards) is listed again and the set converges", () =>
    onMemory(
      Effect.gen(function* () {
        const memory = yield* EtcdClient.MemoryEtcd
        for (let i = 0; i < 5; i++) yield* put(`/svc/old-${i}`, `old-${i}`)
        const { closed, factory } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory, reconnect: spaced10s })
        yield* memory.wipe
        yield* put("/svc/new", "new")
        yield* TestClock.adjust("10 seconds")
        yield* waitForInstances(subscriber, { "/svc/new": "new" })
        expect([...(yield* closed)].sort()).toEqual(["old-0", "old-1", "old-2", "old-3", "old-4"])
        expect((yield* subscriber.state.get)._tag).toBe("Live")
      })
    )
  )

  it.effect("closing the subscriber's scope closes every endpoint scope once and stops following etcd", () =>
    onMemory(
      Effect.gen(function* () {
        yield* put("/svc/a", "a")
        yield* put("/svc/b", "b")
        const { closed, factory, made } = yield* recordingFactory
        const seen = yield* Effect.scoped(
          Effect.gen(function* () {
            const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory })
            return yield* instancesOf(subscriber)
          })
        )
        expect(seen).toEqual({ "/svc/a": "a", "/svc/b": "b" })
        expect([...(yield* closed)].sort()).toEqual(["a", "b"])
        yield* put("/svc/c", "c")
        yield* TestClock.adjust("1 minute")
        expect(yield* made).toEqual(["a", "b"])
        expect([...(yield* closed)].sort()).toEqual(["a", "b"])
      })
    )
  )

  it.effect(
    "factoryTimeout: a factory that hangs is interrupted and skipped, its scope closed; later changes go on",
    () => {
      const { layer, logs } = capturingLogger()
      return onMemory(
        Effect.gen(function* () {
          const closed = yield* Ref.make<ReadonlyArray<string>>([])
          const stuck = yield* Deferred.make<void>()
          // "http://stuck" acquires something, then never finishes
          const factory: Factory<string, string> = (instance) =>
            Effect.gen(function* () {
              yield* Effect.addFinalizer(() => Ref.update(closed, (xs) => [...xs, instance]))
              if (instance === "http://stuck") yield* Effect.zipRight(Deferred.succeed(stuck, undefined), Effect.never)
              return (request: string) => Effect.succeed(`${instance} got ${request}`)
            })
          yield* put("/svc/a", "http://a")
          const subscriber = yield* Subscriber.make({ prefix: "/svc", factory, factoryTimeout: "5 seconds" })
          yield* put("/svc/b", "http://stuck")
          yield* put("/svc/c", "http://c")
          yield* del("/svc/a")
          // the stuck factory holds up the rest of its batch and what follows, until it times out
          yield* Deferred.await(stuck)
          yield* TestClock.adjust("5 seconds")
          const set = yield* waitFor(
            subscriber.endpointSet,
            (s) => s.keys.join() === "/svc/c",
            "the set without the stuck instance"
          )
          expect(yield* Effect.forEach(set.endpoints, (endpoint) => endpoint("ping"))).toEqual(["http://c got ping"])
          expect(yield* instancesOf(subscriber)).toEqual({ "/svc/b": "http://stuck", "/svc/c": "http://c" })
          expect([...(yield* Ref.get(closed))].sort()).toEqual(["http://a", "http://stuck"])
          const warning = logs.find((l) => l.key === "/svc/b")
          expect(warning).toMatchObject({ message: "endpoint factory failed; instance skipped", level: "WARN" })
          // a new value for the key is made again
          yield* put("/svc/b", "http://b")
          const again = yield* waitFor(subscriber.endpointSet, (s) => s.keys.join() === "/svc/b,/svc/c", "b made again")
          expect(yield* Effect.forEach(again.endpoints, (endpoint) => endpoint("ping"))).toEqual([
            "http://b got ping",
            "http://c got ping"
          ])
        })
      ).pipe(Effect.provide(layer))
    }
  )

  it.effect(
    "factoryTimeout gives up at the deadline on a factory whose acquire cannot be interrupted; what it acquires later is released",
    () => {
      const { layer, logs } = capturingLogger()
      return onMemory(
        Effect.gen(function* () {
          const released = yield* Ref.make<ReadonlyArray<string>>([])
          const acquiring = yield* Deferred.make<void>()
          const connect = yield* Deferred.make<void>()
          const stuckReleased = yield* Deferred.make<void>()
          // the idiomatic scoped factory: a connection acquired with acquireRelease, whose acquire
          // cannot be interrupted; the one to "http://stuck" hangs until the test lets it connect
          const factory: Factory<string, string> = (instance) =>
            Effect.gen(function* () {
              const connection = yield* Effect.acquireRelease(
                instance === "http://stuck"
                  ? Effect.zipRight(
                      Deferred.succeed(acquiring, undefined),
                      Effect.as(Deferred.await(connect), instance)
                    )
                  : Effect.succeed(instance),
                (connection) =>
                  Effect.zipRight(
                    Ref.update(released, (xs) => [...xs, connection]),
                    connection === "http://stuck" ? Deferred.succeed(stuckReleased, undefined) : Effect.void
                  )
              )
              return (request: string) => Effect.succeed(`${connection} got ${request}`)
            })
          yield* put("/svc/a", "http://a")
          const subscriber = yield* Subscriber.make({ prefix: "/svc", factory, factoryTimeout: "5 seconds" })
          // the stuck acquire ends before the subscriber is closed, should an assertion fail first
          yield* Effect.addFinalizer(() => Deferred.succeed(connect, undefined))
          yield* put("/svc/b", "http://stuck")
          yield* put("/svc/c", "http://c")
          yield* Deferred.await(acquiring)
          yield* TestClock.adjust("5 seconds")
          // given up on at the deadline, while its acquire still runs: c is made, b skipped with a warning
          const set = yield* waitFor(
            subscriber.endpointSet,
            (s) => s.keys.join() === "/svc/a,/svc/c",
            "the set without the stuck instance"
          )
          expect(yield* Effect.forEach(set.endpoints, (endpoint) => endpoint("ping"))).toEqual([
            "http://a got ping",
            "http://c got ping"
          ])
          expect(logs.find((l) => l.key === "/svc/b")).toMatchObject({
            message: "endpoint factory failed; instance skipped",
            level: "WARN"
          })
          // and the changes after it are not held up
          yield* del("/svc/a")
          yield* waitFor(subscriber.endpointSet, (s) => s.keys.join() === "/svc/c", "a deleted")
          expect(yield* Ref.get(released)).toEqual(["http://a"])
          // the abandoned acquire ends: its connection is released at once, its endpoint scope being closed
          yield* Deferred.succeed(connect, undefined)
          yield* TestServices.provideWithLive(Deferred.await(stuckReleased), (effect) =>
            Effect.timeoutFail(effect, {
              duration: "10 seconds",
              onTimeout: () => new Error("timed out waiting for the stuck connection's release")
            }).pipe(Effect.orDie)
          )
          expect(yield* Ref.get(released)).toEqual(["http://a", "http://stuck"])
          expect((yield* subscriber.endpointSet.get).keys).toEqual(["/svc/c"])
        })
      ).pipe(Effect.provide(layer))
    }
  )

  it.effect("invalid options are a typed InvalidOptions error", () =>
    onMemory(
      Effect.gen(function* () {
        const { factory } = yield* recordingFactory
        const rejected = (options: Subscriber.Options<string, string>) =>
          Effect.map(Effect.exit(Subscriber.make(options)), (exit) =>
            exit._tag === "Failure" ? Cause.failureOption(exit.cause).pipe(Option.map((e) => e.option)) : "accepted"
          )
        expect(yield* rejected({ prefix: "", factory })).toEqual(Option.some("prefix"))
        expect(yield* rejected({ prefix: "/svc", factory, invalidateOnError: -1 })).toEqual(
          Option.some("invalidateOnError")
        )
        // negative inputs that Duration would turn into zero (which invalidateOnError accepts)
        expect(yield* rejected({ prefix: "/svc", factory, invalidateOnError: "-5 seconds" })).toEqual(
          Option.some("invalidateOnError")
        )
        expect(yield* rejected({ prefix: "/svc", factory, invalidateOnError: [-5, 0] })).toEqual(
          Option.some("invalidateOnError")
        )
        // a string from outside the type system, as configuration could hand over
        const soon = "soon" as Duration.DurationInput
        expect(yield* rejected({ prefix: "/svc", factory, invalidateOnError: soon })).toEqual(
          Option.some("invalidateOnError")
        )
        expect(yield* rejected({ prefix: "/svc", factory, factoryTimeout: 0 })).toEqual(Option.some("factoryTimeout"))
        expect(yield* rejected({ prefix: "/svc", factory, factoryTimeout: "-1 seconds" })).toEqual(
          Option.some("factoryTimeout")
        )
        expect(yield* rejected({ prefix: "/svc", factory, factoryTimeout: soon })).toEqual(
          Option.some("factoryTimeout")
        )
      })
    )
  )

  it.effect("NaN, and a duration longer than a timer can wait, are InvalidOptions; Duration.infinity is off", () =>
    onMemory(
      Effect.gen(function* () {
        yield* put("/svc/a", "http://a")
        const { factory } = yield* recordingFactory
        const message = (options: Omit<Subscriber.Options<string, string>, "prefix" | "factory">) =>
          Effect.map(Effect.exit(Subscriber.make({ prefix: "/svc", factory, ...options })), (exit) =>
            exit._tag === "Success"
              ? "accepted"
              : Option.match(Cause.failureOption(exit.cause), {
                  onNone: () => Cause.pretty(exit.cause),
                  onSome: (error) => error.message
                })
          )
        // Duration decodes NaN to zero, which invalidateOnError would take as "invalidate at once"
        expect(yield* message({ invalidateOnError: Number.NaN })).toBe(
          "invalid option invalidateOnError: not a duration: NaN"
        )
        expect(yield* message({ invalidateOnError: [Number.NaN, 0] })).toBe(
          "invalid option invalidateOnError: not a duration: [NaN, 0]"
        )
        expect(yield* message({ factoryTimeout: Number.NaN })).toBe(
          "invalid option factoryTimeout: not a duration: NaN"
        )
        // Effect's clock never fires a sleep longer than 2^31 - 1 ms: such a timeout would mean never
        const limit = "must be at most 24d 20h 31m 23s 647ms (a timer's limit)"
        expect(yield* message({ invalidateOnError: "30 days" })).toBe(
          `invalid option invalidateOnError: ${limit}, got 30 days`
        )
        expect(yield* message({ factoryTimeout: "30 days" })).toBe(
          `invalid option factoryTimeout: ${limit}, got 30 days`
        )
        expect(yield* message({ factoryTimeout: Duration.millis(2 ** 31) })).toBe(
          `invalid option factoryTimeout: ${limit}, got 24d 20h 31m 23s 648ms`
        )
        // the limit itself, and infinity (off, as leaving the option out), are accepted
        for (const accepted of [Duration.millis(2 ** 31 - 1), Duration.infinity]) {
          const subscriber = yield* Subscriber.make({
            prefix: "/svc",
            factory,
            invalidateOnError: accepted,
            factoryTimeout: accepted
          })
          expect((yield* subscriber.endpointSet.get).keys).toEqual(["/svc/a"])
        }
      })
    )
  )

  it.effect("several upstream services: one Tag and one Layer each, called through retry(roundRobin)", () => {
    class Users extends Subscriber.Tag<Users, string, string>()("test/Users") {}
    class Orders extends Subscriber.Tag<Orders, string, string>()("test/Orders") {}
    const factory: Factory<string, string> = (instance) =>
      Effect.succeed((request: string) => Effect.succeed(`${instance}: ${request}`))
    const program = Effect.gen(function* () {
      const users = yield* Retry.retry(Balancer.roundRobin(yield* Users), { max: 3, timeout: "1 second" })
      const orders = yield* Retry.retry(Balancer.roundRobin(yield* Orders), { max: 3, timeout: "1 second" })
      return [yield* users("get"), yield* users("get"), yield* orders("list")]
    })
    const setup = Layer.effectDiscard(
      Effect.all([put("/users/1", "users-1"), put("/users/2", "users-2"), put("/orders/1", "orders-1")])
    )
    const subscribers = Layer.merge(
      Subscriber.layer(Users, { prefix: "/users", factory }),
      Subscriber.layer(Orders, { prefix: "/orders", factory })
    )
    return program.pipe(
      Effect.provide(subscribers.pipe(Layer.provide(setup), Layer.provideMerge(EtcdClient.layerMemory))),
      Effect.map((results) => expect(results).toEqual(["users-1: get", "users-2: get", "orders-1: list"]))
    )
  })

  it.effect("layerConfig reads the prefix and invalidateOnError from Config", () => {
    class Users extends Subscriber.Tag<Users, string, string>()("test/ConfiguredUsers") {}
    const factory: Factory<string, string> = (instance) =>
      Effect.succeed((request: string) => Effect.succeed(`${instance}: ${request}`))
    const users = Subscriber.layerConfig(
      Users,
      { prefix: Config.string("USERS_PREFIX"), invalidateOnError: Config.duration("USERS_INVALIDATE") },
      { factory }
    )
    return Effect.gen(function* () {
      yield* put("/users/1", "users-1")
      yield* put("/usersvc2/1", "not a user")
      const subscriber = yield* Users
      expect(subscriber.prefix).toBe("/users/")
      yield* waitForInstances(subscriber, { "/users/1": "users-1" })
    }).pipe(
      Effect.provide(users.pipe(Layer.provideMerge(EtcdClient.layerMemory))),
      Effect.withConfigProvider(
        ConfigProvider.fromMap(
          new Map([
            ["USERS_PREFIX", "/users"],
            ["USERS_INVALIDATE", "30 seconds"]
          ])
        )
      )
    )
  })
})

describe("Subscriber.follow", () => {
  it.effect("calls f with the current set, then each new one; a follower that falls behind gets the newest", () =>
    onMemory(
      Effect.gen(function* () {
        yield* put("/svc/a", "http://a")
        const { factory } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix: "/svc", factory })
        const seen = yield* Queue.unbounded<ReadonlyArray<string>>()
        const gate = yield* Deferred.make<void>()
        let calls = 0
        yield* Effect.forkScoped(
          Subscriber.follow(subscriber.endpointSet, (set) =>
            Effect.zipRight(
              Queue.offer(seen, set.keys),
              // the second call holds the follower up until the gate opens
              ++calls === 2 ? Deferred.await(gate) : Effect.void
            )
          )
        )
        expect(yield* Queue.take(seen)).toEqual(["/svc/a"])
        yield* put("/svc/b", "http://b")
        expect(yield* Queue.take(seen)).toEqual(["/svc/a", "/svc/b"])
        // two more updates while the follower is busy: it skips to the newest
        yield* put("/svc/c", "http://c")
        yield* waitForInstances(subscriber, { "/svc/a": "http://a", "/svc/b": "http://b", "/svc/c": "http://c" })
        yield* del("/svc/a")
        yield* waitForInstances(subscriber, { "/svc/b": "http://b", "/svc/c": "http://c" })
        yield* Deferred.succeed(gate, undefined)
        expect(yield* Queue.take(seen)).toEqual(["/svc/b", "/svc/c"])
        yield* put("/svc/d", "http://d")
        expect(yield* Queue.take(seen)).toEqual(["/svc/b", "/svc/c", "/svc/d"])
        expect(calls).toBe(4)
      })
    )
  )

  it.effect("fails with f's failure, and stops when interrupted", () =>
    onMemory(
      Effect.gen(function* () {
        const { factory } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix: "/svc", factory })
        const seen = yield* Queue.unbounded<number>()
        const failing = yield* Effect.fork(
          Subscriber.follow(subscriber.instances, (instances) =>
            instances.has("/svc/bad") ? Effect.fail("bad instance" as const) : Queue.offer(seen, instances.size)
          )
        )
        const interrupted = yield* Effect.fork(Subscriber.follow(subscriber.instances, () => Effect.void))
        expect(yield* Queue.take(seen)).toBe(0)
        yield* put("/svc/bad", "http://bad")
        expect(yield* Fiber.await(failing)).toEqual(Exit.fail("bad instance"))
        expect(Exit.isInterrupted(yield* Fiber.interrupt(interrupted))).toBe(true)
      })
    )
  )

  it.effect(
    "a follower of plain Effect.sync (run without waking its fiber) sees each change; one that needs its fiber in between too; a throw is a defect",
    () =>
      onMemory(
        Effect.gen(function* () {
          const { factory } = yield* recordingFactory
          const subscriber = yield* Subscriber.make({ prefix: "/svc", factory })
          const sizes: Array<number> = []
          const seen = yield* Queue.unbounded<number>()
          const follower = yield* Effect.fork(
            Subscriber.follow(subscriber.instances, (instances) =>
              instances.has("/svc/boom")
                ? Effect.sync(() => {
                    throw new Error("boom")
                  })
                : instances.size === 2
                  ? // an effect that needs the fiber, between plain ones
                    Effect.zipRight(Effect.yieldNow(), Queue.offer(seen, instances.size))
                  : Effect.sync(() => {
                      sizes.push(instances.size)
                      Queue.unsafeOffer(seen, instances.size)
                    })
            )
          )
          expect(yield* Queue.take(seen)).toBe(0)
          yield* put("/svc/a", "http://a")
          expect(yield* Queue.take(seen)).toBe(1)
          yield* put("/svc/b", "http://b")
          expect(yield* Queue.take(seen)).toBe(2)
          yield* put("/svc/c", "http://c")
          expect(yield* Queue.take(seen)).toBe(3)
          yield* del("/svc/c")
          expect(yield* Queue.take(seen)).toBe(2)
          yield* del("/svc/b")
          expect(yield* Queue.take(seen)).toBe(1)
          expect(sizes).toEqual([0, 1, 3, 1])
          yield* put("/svc/boom", "http://boom")
          const exit = yield* Fiber.await(follower)
          expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
          // a follower interrupted while waiting is not called again (a second one shows the change came)
          const calls: Array<number> = []
          const witness = yield* Queue.unbounded<number>()
          const interrupted = yield* Effect.fork(
            Subscriber.follow(subscriber.instances, (instances) =>
              Effect.sync(() => {
                calls.push(instances.size)
                Queue.unsafeOffer(witness, instances.size)
              })
            )
          )
          yield* Effect.forkScoped(
            Subscriber.follow(subscriber.instances, (instances) =>
              Effect.sync(() => Queue.unsafeOffer(witness, -instances.size))
            )
          )
          expect([yield* Queue.take(witness), yield* Queue.take(witness)].sort()).toEqual([-2, 2])
          yield* Fiber.interrupt(interrupted)
          yield* del("/svc/a")
          expect(yield* Queue.take(witness)).toBe(-1)
          expect(calls).toEqual([2])
        })
      )
  )

  it.effect("an f that throws while making its effect: the follower dies with the defect", () =>
    onMemory(
      Effect.gen(function* () {
        const { factory } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix: "/svc", factory })
        const seen = yield* Queue.unbounded<number>()
        const follower = yield* Effect.fork(
          Subscriber.follow(subscriber.instances, (instances) => {
            if (instances.has("/svc/bad")) throw new Error("f threw")
            return Effect.sync(() => Queue.unsafeOffer(seen, instances.size))
          })
        )
        expect(yield* Queue.take(seen)).toBe(0)
        yield* put("/svc/bad", "http://bad")
        const exit = yield* Fiber.await(follower)
        expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
      })
    )
  )

  it.effect("follows any Subscribable: a SubscriptionRef, the subscriber's state", () =>
    Effect.gen(function* () {
      const ref = yield* SubscriptionRef.make(1)
      const seen = yield* Queue.unbounded<number>()
      yield* Effect.forkScoped(Subscriber.follow(ref, (n) => Queue.offer(seen, n)))
      expect(yield* Queue.take(seen)).toBe(1)
      yield* SubscriptionRef.set(ref, 2)
      expect(yield* Queue.take(seen)).toBe(2)
      yield* onMemory(
        Effect.gen(function* () {
          const { factory } = yield* recordingFactory
          const subscriber = yield* Subscriber.make({ prefix: "/svc", factory })
          const states = yield* Queue.unbounded<string>()
          yield* Effect.forkScoped(Subscriber.follow(subscriber.state, (state) => Queue.offer(states, state._tag)))
          expect(yield* Queue.take(states)).toBe("Live")
        })
      )
    }).pipe(Effect.scoped)
  )
})
