/**
 * The Subscriber against a real etcd spawned by the test kit.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as HashMap from "effect/HashMap"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import type * as Subscribable from "effect/Subscribable"
import type { Factory } from "../src/Endpoint.js"
import * as EtcdClient from "../src/EtcdClient.js"
import * as Balancer from "../src/Balancer.js"
import * as Retry from "../src/Retry.js"
import * as Service from "../src/Service.js"
import * as Subscriber from "../src/Subscriber.js"
import * as EtcdServer from "../src/testing/EtcdServer.js"
import * as TtlOption from "../src/TtlOption.js"
import { call, etcd3 } from "./testing-helpers.js"

/** Keeps this run's keys apart from any other run's on a shared server. */
const run = `${process.pid}-${Date.now()}`

/** Waits on the subscribable's changes until `predicate` holds; 30 s at most. */
const waitFor = <A>(subscribable: Subscribable.Subscribable<A>, predicate: (a: A) => boolean, what: string) =>
  Stream.runHead(Stream.filter(subscribable.changes, predicate)).pipe(
    Effect.flatMap((a) => (Option.isSome(a) ? Effect.succeed(a.value) : Effect.dieMessage(`no more changes: ${what}`))),
    Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error(`timed out waiting for ${what}`) }),
    Effect.orDie
  )

const same = (a: ReadonlyMap<string, string>, b: ReadonlyMap<string, string>) =>
  a.size === b.size && [...a].every(([k, v]) => b.get(k) === v)

const waitForInstances = (subscriber: Subscriber.Subscriber<string, string>, expected: Record<string, string>) =>
  waitFor(subscriber.instances, (m) => same(m, new Map(Object.entries(expected))), JSON.stringify(expected))

/** The keys and values under a prefix, as etcd has them now. */
const truth = (client: EtcdClient.EtcdClient, prefix: string) =>
  Effect.map(client.list(prefix), (listing) => new Map(listing.entries.map((kv) => [kv.key, kv.value] as const)))

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

/** A subscriber of `prefix` through `client` that reconnects and lists again every 200 ms. */
const quickSubscriber = (client: EtcdClient.EtcdClient, prefix: string, factory: Factory<string, string>) =>
  Subscriber.make({
    prefix,
    factory,
    reconnect: Schedule.spaced("200 millis"),
    retryList: Schedule.spaced("200 millis")
  }).pipe(Effect.provideService(EtcdClient.EtcdClient, client))

const callAll = (subscriber: Subscriber.Subscriber<string, string>) =>
  Effect.flatMap(subscriber.endpoints, (endpoints) => Effect.forEach(endpoints, (endpoint) => endpoint("ping")))

/** A client of the running server, made in the current scope (a separate connection each time). */
const connect = Effect.flatMap(EtcdServer.EtcdServer, (server) => EtcdClient.make(server.clientOptions))

describe("Subscriber against a real etcd", () => {
  layer(EtcdServer.layer(), { excludeTestServices: true, timeout: "60 seconds" })((it) => {
    it.scoped("N registered instances give N endpoints; a deregistered one leaves and its scope closes once", () =>
      Effect.gen(function* () {
        const client = yield* connect
        const registrations = yield* connect
        const prefix = `/sub-${run}/users`
        const ttl = yield* TtlOption.make({ heartbeat: "10 seconds", ttl: "60 seconds" })
        const services = Array.from({ length: 5 }, (_, i) =>
          Service.make({ key: `${prefix}/10.0.0.${i}:8080`, value: `http://10.0.0.${i}:8080`, ttl })
        )
        yield* Effect.forEach(services, (s) => registrations.register(s))
        const { closed, factory, made } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix, factory }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, client)
        )
        expect((yield* subscriber.endpoints).length).toBe(5)
        expect(yield* callAll(subscriber)).toEqual(services.map((s) => `${s.value} got ping`))

        yield* registrations.deregister(services[2]!)
        yield* waitFor(subscriber.instances, (m) => m.size === 4, "4 instances")
        expect((yield* subscriber.endpoints).length).toBe(4)
        expect(yield* closed).toEqual(["http://10.0.0.2:8080"])
        expect(yield* made).toEqual(services.map((s) => s.value))

        // and the endpoints are served through a balancer and retry
        const call = yield* Retry.retry(Balancer.roundRobin(subscriber), { max: 3, timeout: "5 seconds" })
        const answers = yield* Effect.forEach([1, 2, 3, 4], () => call("hello"))
        expect(new Set(answers).size).toBe(4)
      })
    )

    it.scoped("a key whose value changes: the old endpoint is closed and a new one made", () =>
      Effect.gen(function* () {
        const client = yield* connect
        const writer = yield* connect
        const prefix = `/sub-${run}/change/`
        yield* writer.put(`${prefix}a`, "v1")
        yield* writer.put(`${prefix}b`, "b")
        const { closed, factory, made } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix, factory }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, client)
        )
        yield* writer.put(`${prefix}a`, "v2")
        yield* waitForInstances(subscriber, { [`${prefix}a`]: "v2", [`${prefix}b`]: "b" })
        expect(yield* made).toEqual(["v1", "b", "v2"])
        expect(yield* closed).toEqual(["v1"])
        expect(yield* callAll(subscriber)).toEqual(["v2 got ping", "b got ping"])
      })
    )

    it.scoped("the prefix boundary: /services/bar never sees /services/barsvc2/...", () =>
      Effect.gen(function* () {
        const client = yield* connect
        const writer = yield* connect
        const base = `/sub-${run}/services`
        yield* writer.put(`${base}/bar/1`, "bar-1")
        yield* writer.put(`${base}/barsvc2/1`, "barsvc2-1")
        const { factory } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix: `${base}/bar`, factory }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, client)
        )
        yield* writer.put(`${base}/barsvc2/2`, "barsvc2-2")
        yield* writer.put(`${base}/bar/2`, "bar-2")
        yield* waitForInstances(subscriber, { [`${base}/bar/1`]: "bar-1", [`${base}/bar/2`]: "bar-2" })
        expect(yield* callAll(subscriber)).toEqual(["bar-1 got ping", "bar-2 got ping"])
      })
    )

    it.scoped("a watch that falls behind a compaction lists again: the set is right afterwards", () =>
      Effect.gen(function* () {
        const client = yield* connect
        const writer = yield* connect
        const prefix = `/sub-${run}/compact/`
        yield* writer.put(`${prefix}stays`, "stays")
        yield* writer.put(`${prefix}leaves`, "leaves")
        yield* writer.put(`${prefix}changes`, "old")
        // the subscriber lists, then its first watch waits here while the history it needs is compacted
        const gate = yield* Deferred.make<void>()
        const watches = yield* Ref.make<ReadonlyArray<number>>([])
        const gated: EtcdClient.EtcdClient = {
          ...client,
          watch: (prefix, options) =>
            Stream.unwrap(
              Effect.map(
                Ref.getAndUpdate(watches, (xs) => [...xs, options.fromRevision]),
                (before) =>
                  before.length === 0
                    ? Stream.unwrap(Effect.as(Deferred.await(gate), client.watch(prefix, options)))
                    : client.watch(prefix, options)
              )
            )
        }
        const { closed, factory, made } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix, factory }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, gated)
        )
        yield* writer.delete(`${prefix}leaves`)
        yield* writer.put(`${prefix}changes`, "new")
        const revision = yield* writer.put(`${prefix}arrives`, "arrives")
        yield* writer.compact(revision)
        yield* Deferred.succeed(gate, undefined)

        yield* waitForInstances(subscriber, {
          [`${prefix}arrives`]: "arrives",
          [`${prefix}changes`]: "new",
          [`${prefix}stays`]: "stays"
        })
        const [first, second] = yield* Ref.get(watches)
        // the first watch asked for compacted history; the second starts at a new list's revision
        expect(first).toBeLessThan(revision)
        expect(second).toBeGreaterThanOrEqual(revision)
        expect([...(yield* made)].sort()).toEqual(["arrives", "leaves", "new", "old", "stays"])
        expect([...(yield* closed)].sort()).toEqual(["leaves", "old"])
        expect(yield* callAll(subscriber)).toEqual(["arrives got ping", "new got ping", "stays got ping"])
      })
    )

    it.scoped("a consumer paused while etcd writes and compacts: once it resumes the set is right", () =>
      Effect.gen(function* () {
        const client = yield* connect
        const writer = yield* connect
        const prefix = `/sub-${run}/paused/`
        yield* writer.put(`${prefix}stays`, "stays")
        yield* writer.put(`${prefix}leaves`, "leaves")
        yield* writer.put(`${prefix}changes`, "old")
        // while `held` is set, the subscriber's watch consumer waits before taking the next event
        const held = yield* Ref.make<Option.Option<Deferred.Deferred<void>>>(Option.none())
        const firstHeld = yield* Deferred.make<void>()
        const pausable: EtcdClient.EtcdClient = {
          ...client,
          watch: (prefix, options) =>
            client
              .watch(prefix, options)
              .pipe(
                Stream.tap(() =>
                  Effect.flatMap(Ref.get(held), (gate) =>
                    Option.isSome(gate)
                      ? Effect.zipRight(Deferred.succeed(firstHeld, undefined), Deferred.await(gate.value))
                      : Effect.void
                  )
                )
              )
        }
        const { closed, factory, made } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix, factory }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, pausable)
        )
        const gate = yield* Deferred.make<void>()
        yield* Ref.set(held, Option.some(gate))
        yield* writer.delete(`${prefix}leaves`)
        yield* Deferred.await(firstHeld)
        yield* writer.put(`${prefix}changes`, "new")
        const revision = yield* writer.put(`${prefix}arrives`, "arrives")
        yield* writer.compact(revision)
        yield* Ref.set(held, Option.none())
        yield* Deferred.succeed(gate, undefined)

        yield* waitForInstances(subscriber, {
          [`${prefix}arrives`]: "arrives",
          [`${prefix}changes`]: "new",
          [`${prefix}stays`]: "stays"
        })
        expect([...(yield* made)].sort()).toEqual(["arrives", "leaves", "new", "old", "stays"])
        expect([...(yield* closed)].sort()).toEqual(["leaves", "old"])
      })
    )

    it.scoped("500 random puts and deletes from other clients, interleaved: the final set equals etcd's keys", () =>
      Effect.gen(function* () {
        const client = yield* connect
        const prefix = `/sub-${run}/random/`
        const { closed, factory, made } = yield* recordingFactory
        const subscriber = yield* Subscriber.make({ prefix, factory }).pipe(
          Effect.provideService(EtcdClient.EtcdClient, client)
        )
        const writers = yield* Effect.all([connect, connect, connect, connect])
        const counter = yield* Ref.make(0)
        // 4 writers, 125 operations each, over 30 keys: puts of fresh values and deletes, interleaved
        yield* Effect.forEach(
          writers,
          (writer, w) =>
            Effect.gen(function* () {
              for (let i = 0; i < 125; i++) {
                const key = `${prefix}k${yield* Random.nextIntBetween(0, 30)}`
                const n = yield* Ref.updateAndGet(counter, (c) => c + 1)
                if ((yield* Random.next) < 0.6) yield* writer.put(key, `w${w}-v${n}`)
                else yield* writer.delete(key)
              }
            }).pipe(Effect.withRandom(Random.make(`writer-${w}`))),
          { concurrency: "unbounded", discard: true }
        )
        const expected = yield* truth(client, prefix)
        yield* waitFor(subscriber.instances, (m) => same(m, expected), "the final set")
        expect(yield* Ref.get(counter)).toBe(500)
        // every endpoint made is either current or closed exactly once
        const live = [...expected.values()].sort()
        const madeValues = yield* made
        const closedValues = yield* closed
        expect(new Set(closedValues).size).toBe(closedValues.length)
        expect(madeValues.filter((v) => !closedValues.includes(v)).sort()).toEqual(live)
        expect([...(yield* callAll(subscriber))].sort()).toEqual(live.map((v) => `${v} got ping`).sort())
      })
    )

    it.scoped(
      "keys that are not UTF-8 are logged and skipped, and never taken for another key, listed or watched",
      () =>
        Effect.gen(function* () {
          const server = yield* EtcdServer.EtcdServer
          const client = yield* connect
          // another client, which writes keys as bytes
          const raw = yield* etcd3(server.clientUrls)
          const prefix = `/sub-${run}/not-utf8-keys/`
          const bytesKey = (last: number) => Buffer.concat([Buffer.from(`${prefix}k`), Buffer.from([last])])
          // two keys that differ only in a byte that is not UTF-8, and a well-formed key holding the
          // replacement character U+FFFD, which the bad bytes decode to
          yield* call(() => raw.put(bytesKey(0xff)).value("http://ff").exec())
          yield* call(() => raw.put(bytesKey(0xfe)).value("http://fe").exec())
          yield* client.put(`${prefix}k\uFFFD`, "http://replacement")
          yield* client.put(`${prefix}ok`, "http://ok")
          const warnings: Array<string> = []
          const logger = Logger.make(({ annotations, logLevel, message }) => {
            const text = Array.isArray(message) ? message[0] : message
            if (logLevel._tag === "Warning" && typeof text === "string" && text.includes("UTF-8")) {
              warnings.push(`${text} ${String(Option.getOrUndefined(HashMap.get(annotations, "key")))}`)
            }
          })
          const { factory, made } = yield* recordingFactory
          const subscriber = yield* Subscriber.make({ prefix, factory }).pipe(
            Effect.provideService(EtcdClient.EtcdClient, client),
            Effect.provide(Logger.replace(Logger.defaultLogger, logger))
          )
          expect(yield* callAll(subscriber)).toEqual(["http://replacement got ping", "http://ok got ping"])
          expect([...(yield* subscriber.instances.get)]).toEqual([
            [`${prefix}k\uFFFD`, "http://replacement"],
            [`${prefix}ok`, "http://ok"]
          ])
          expect(warnings).toEqual([
            `key is not valid UTF-8; instance skipped ${prefix}k\\xfe`,
            `key is not valid UTF-8; instance skipped ${prefix}k\\xff`
          ])

          // through the watch: a put of another such key, and the delete of one, change no instance
          yield* call(() => raw.put(bytesKey(0xfd)).value("http://fd").exec())
          yield* call(() => raw.delete().key(bytesKey(0xff)).exec())
          yield* client.put(`${prefix}z`, "http://z")
          yield* waitForInstances(subscriber, {
            [`${prefix}k\uFFFD`]: "http://replacement",
            [`${prefix}ok`]: "http://ok",
            [`${prefix}z`]: "http://z"
          })
          expect(yield* callAll(subscriber)).toEqual([
            "http://replacement got ping",
            "http://ok got ping",
            "http://z got ping"
          ])
          expect(warnings.slice(2)).toEqual([`key is not valid UTF-8; instance skipped ${prefix}k\\xfd`])
          expect([...(yield* made)].sort()).toEqual(["http://ok", "http://replacement", "http://z"])
        })
    )
  })

  it.scopedLive("etcd restarted: the subscriber reports the outage and converges to the truth", () =>
    Effect.gen(function* () {
      const server = yield* EtcdServer.make()
      const client = yield* EtcdClient.make(server.clientOptions)
      const prefix = `/sub-${run}/restart/`
      yield* client.put(`${prefix}a`, "a")
      yield* client.put(`${prefix}b`, "b")
      const { closed, factory } = yield* recordingFactory
      const subscriber = yield* quickSubscriber(client, prefix, factory)
      expect(yield* callAll(subscriber)).toEqual(["a got ping", "b got ping"])

      yield* server.kill
      yield* waitFor(subscriber.state, (s) => s._tag === "Failing", "the outage to show")
      // the last good set is still served
      expect(yield* callAll(subscriber)).toEqual(["a got ping", "b got ping"])
      yield* server.start
      const writer = yield* EtcdClient.make(server.clientOptions)
      yield* writer.delete(`${prefix}a`)
      yield* writer.put(`${prefix}c`, "c")
      yield* waitFor(subscriber.state, (s) => s._tag === "Live", "Live again")
      yield* waitForInstances(subscriber, { [`${prefix}b`]: "b", [`${prefix}c`]: "c" })
      expect(yield* closed).toEqual(["a"])
    })
  )

  it.scopedLive("etcd wiped (revision gone backwards): the subscriber lists again and converges to the new truth", () =>
    Effect.gen(function* () {
      const server = yield* EtcdServer.make()
      const client = yield* EtcdClient.make(server.clientOptions)
      const prefix = `/sub-${run}/wipe/`
      for (let i = 0; i < 10; i++) yield* client.put(`${prefix}old-${i}`, `old-${i}`)
      const { closed, factory } = yield* recordingFactory
      const subscriber = yield* quickSubscriber(client, prefix, factory)
      expect((yield* subscriber.endpoints).length).toBe(10)

      yield* server.wipe
      const writer = yield* EtcdClient.make(server.clientOptions)
      yield* writer.put(`${prefix}new`, "new")
      yield* waitForInstances(subscriber, { [`${prefix}new`]: "new" })
      expect((yield* closed).length).toBe(10)
      expect(yield* callAll(subscriber)).toEqual(["new got ping"])
    })
  )

  it.scopedLive(
    "etcd wiped right after the listing, its revision caught up before the watch connects: told by the cluster id",
    () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.make()
        const client = yield* EtcdClient.make(server.clientOptions)
        const prefix = `/sub-${run}/wipe-early/`
        yield* client.put(`${prefix}old`, "old")
        const { factory } = yield* recordingFactory
        const subscriber = yield* quickSubscriber(client, prefix, factory)
        expect(yield* callAll(subscriber)).toEqual(["old got ping"])
        // before the subscriber's watch has heard from etcd: the wiped store's revisions soon pass
        // the listed one, so the revision alone cannot tell
        yield* server.wipe
        const writer = yield* EtcdClient.make(server.clientOptions)
        yield* writer.put(`${prefix}new-1`, "new-1")
        yield* writer.put(`${prefix}new-2`, "new-2")
        yield* waitForInstances(subscriber, { [`${prefix}new-1`]: "new-1", [`${prefix}new-2`]: "new-2" })
        expect(yield* callAll(subscriber)).toEqual(["new-1 got ping", "new-2 got ping"])
      })
  )
})
