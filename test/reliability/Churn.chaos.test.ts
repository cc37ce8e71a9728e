/**
 * Churn soak (npm run test:chaos): 50 registrars come and go for 60 s against
 * a real etcd, across 5 clients (5 processes' worth), while the store is
 * compacted at random moments. A subscriber on its own client follows, through
 * a proxy that drops its connection at random moments, each time followed by a
 * compaction (so that its watch cannot resume and it must list again). At the
 * end its set equals etcd's keys under the prefix; along the way, every
 * instance it held after its deregistration had completed is measured, and the
 * longest such time is reported (and bounded).
 *
 * The sleeps here are the scenario (how long an instance lives, when the next
 * compaction comes), drawn from a seeded `Random`; every check waits on events.
 */
import { describe, expect, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Random from "effect/Random"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { randomUUID } from "node:crypto"
import * as EtcdClient from "../../src/EtcdClient.js"
import * as Registrar from "../../src/Registrar.js"
import * as Subscriber from "../../src/Subscriber.js"
import { EtcdServer } from "../../src/testing/index.js"
import * as TtlOption from "../../src/TtlOption.js"
import { awaitConverged, captureLogs, echoFactory, measure, now, tcpProxy, unhandledRejections } from "./support.js"

const run = randomUUID().slice(0, 8)
const durationMillis = 60_000
const clients = 5
const slotsPerClient = 10

const percentile = (values: ReadonlyArray<number>, p: number): number => {
  if (values.length === 0) return 0
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
}

describe("Reliability: churn soak", () => {
  layer(EtcdServer.layer(), { excludeTestServices: true, timeout: "240 seconds" })((it) => {
    it.scoped(
      "50 registrars coming and going for 60 s with random compactions: the subscriber ends equal to etcd and never holds a deregistered instance for long",
      () =>
        captureLogs((logs) =>
          Effect.gen(function* () {
            const server = yield* EtcdServer.EtcdServer
            const rejections = yield* unhandledRejections
            const prefix = `/reliability-${run}/churn/`
            const observer = yield* EtcdClient.make(server.clientOptions)
            const registrarClients = yield* Effect.forEach(Array.from({ length: clients }), () =>
              EtcdClient.make(server.clientOptions)
            )
            // the subscriber's connection goes through a proxy that drops it at random moments
            const proxy = yield* tcpProxy(server.clientUrl)
            const subscriberClient = yield* EtcdClient.make({ endpoints: [proxy.url] })
            const ttl = yield* TtlOption.make({ heartbeat: "500 millis", ttl: "2 seconds" })

            // what happened to every key (each registration has a key of its own)
            const registeredAt = new Map<string, number>()
            const deregisteredAt = new Map<string, number>()
            const seenAt = new Map<string, number>()
            const leftAt = new Map<string, number>()
            const failures: Array<string> = []
            let compactions = 0
            let severed = 0

            const subscriber = yield* Subscriber.make({ prefix, factory: echoFactory }).pipe(
              Effect.provideService(EtcdClient.EtcdClient, subscriberClient)
            )
            // every change of the subscriber: when each key came and went (the exact version of sampling)
            let held: ReadonlyMap<string, string> = new Map()
            let staleSamples = 0
            let samples = 0
            let longestStaleSample = 0
            yield* subscriber.instances.changes.pipe(
              Stream.runForEach((instances) =>
                Effect.sync(() => {
                  const at = now()
                  for (const key of instances.keys()) if (!held.has(key) && !seenAt.has(key)) seenAt.set(key, at)
                  for (const key of held.keys()) if (!instances.has(key)) leftAt.set(key, at)
                  held = instances
                })
              ),
              Effect.forkScoped
            )
            const deadline = now() + durationMillis
            const kept: Array<Scope.CloseableScope> = []
            const slot = (client: EtcdClient.EtcdClient, index: number) =>
              Effect.gen(function* () {
                for (let generation = 0; ; generation++) {
                  const key = `${prefix}slot-${String(index).padStart(2, "0")}-gen-${generation}`
                  const scope = yield* Scope.make()
                  // one registration in ten is a plain key without lease
                  const withTtl = (yield* Random.nextIntBetween(0, 10)) > 0
                  const made = yield* Effect.exit(
                    Registrar.make({
                      key,
                      value: `http://${key.slice(prefix.length)}:8080`,
                      ttl: withTtl ? ttl : undefined
                    }).pipe(Effect.provideService(EtcdClient.EtcdClient, client), Scope.extend(scope))
                  )
                  if (Exit.isFailure(made)) {
                    failures.push(`${key}: register: ${String(made.cause)}`)
                    yield* Scope.close(scope, Exit.void)
                    continue
                  }
                  registeredAt.set(key, now())
                  yield* Effect.sleep(yield* Random.nextIntBetween(100, 2500))
                  if (now() >= deadline) {
                    kept.push(scope)
                    return
                  }
                  yield* Scope.close(scope, Exit.void)
                  deregisteredAt.set(key, now())
                  yield* Effect.sleep(yield* Random.nextIntBetween(0, 500))
                }
              })
            // two compacting fibers may pick the same revision: the second finds it compacted
            const compactNow = Effect.flatMap(observer.revision, observer.compact).pipe(
              Effect.tap(() =>
                Effect.sync(() => {
                  compactions++
                })
              ),
              Effect.catchIf(
                (error) => error.reason === "Compacted",
                () => Effect.void
              )
            )
            const compactor = Effect.gen(function* () {
              for (;;) {
                yield* Effect.sleep(yield* Random.nextIntBetween(500, 4000))
                yield* compactNow
              }
            }).pipe(Effect.catchAll((error) => Effect.sync(() => failures.push(`compact: ${error.message}`))))
            // the subscriber's connection dropped, and the history it would resume from compacted away
            // before it is back: its watch fails with Compacted and it lists again
            const severer = Effect.gen(function* () {
              for (;;) {
                yield* Effect.sleep(yield* Random.nextIntBetween(2000, 6000))
                yield* proxy.sever
                severed++
                yield* compactNow
              }
            }).pipe(Effect.catchAll((error) => Effect.sync(() => failures.push(`sever: ${error.message}`))))

            // and a sampler, as a user polling the subscriber every 50 ms would see it
            const sampler = yield* Effect.forkScoped(
              Effect.sync(() => {
                samples++
                const at = now()
                let stale = false
                for (const key of held.keys()) {
                  const gone = deregisteredAt.get(key)
                  if (gone !== undefined) {
                    stale = true
                    longestStaleSample = Math.max(longestStaleSample, at - gone)
                  }
                }
                if (stale) staleSamples++
              }).pipe(Effect.repeat({ schedule: Schedule.spaced("50 millis") }))
            )
            const compacting = yield* Effect.forkScoped(compactor)
            const severing = yield* Effect.forkScoped(severer)
            const started = now()
            yield* Effect.forEach(
              registrarClients.flatMap((client, c) =>
                Array.from({ length: slotsPerClient }, (_, s) => slot(client, c * slotsPerClient + s))
              ),
              (task) => task,
              { concurrency: "unbounded", discard: true }
            ).pipe(Effect.withRandom(Random.make(`churn-${run}`)))
            const ended = now()
            yield* Fiber.interrupt(compacting)
            yield* Fiber.interrupt(severing)
            yield* Fiber.interrupt(sampler)

            // the end state: the registrations kept alive at the deadline, and nothing else
            const final = yield* awaitConverged(subscriber, observer, 30, "the subscriber to equal etcd at the end")
            const convergedAt = now()
            expect(final.size).toBe(kept.length)
            expect(failures).toEqual([])
            // every deregistered key the subscriber held left it (one that came and went while it was
            // disconnected may never have been seen); the longest it stayed after deregistering
            const stale: Array<number> = []
            let unseen = 0
            for (const [key, gone] of deregisteredAt) {
              if (!seenAt.has(key)) {
                unseen++
                continue
              }
              const left = leftAt.get(key)
              expect(left, `${key} was deregistered but never left the subscriber`).toBeDefined()
              if (left !== undefined) stale.push(Math.max(0, left - gone))
            }
            const visible: Array<number> = []
            for (const [key, at] of registeredAt) {
              const seen = seenAt.get(key)
              if (seen !== undefined) visible.push(Math.max(0, seen - at))
            }
            const longestStale = Math.max(0, ...stale)
            expect(longestStale).toBeLessThan(5000)

            // closing the rest empties both
            yield* Effect.forEach(kept, (scope) => Scope.close(scope, Exit.void), { discard: true })
            const empty = yield* awaitConverged(subscriber, observer, 30, "the subscriber to be empty at the end")
            expect(empty.size).toBe(0)
            expect((yield* observer.list(prefix)).entries).toEqual([])
            expect(rejections.reasons).toEqual([])

            const relists = logs.lines.filter((line) => line.includes("listing again")).length
            const compacted = logs.lines.filter((line) => line.includes("listing again") && line.includes("Compacted"))
            // the compactions did bite: the subscriber had to list again after some of them
            expect(compacted.length).toBeGreaterThan(0)
            yield* Effect.log(
              `[measure] churn: ${registeredAt.size} registrations, ${deregisteredAt.size} deregistrations, ${compactions} compactions, ${severed} dropped subscriber connections, ${relists} subscriber re-lists (${compacted.length} after Compacted), over ${Math.round(ended - started)} ms`
            )
            yield* measure(
              "churn: longest a deregistered instance stayed in the subscriber (every change)",
              longestStale
            )
            yield* measure("churn: p99 deregistered -> left the subscriber", percentile(stale, 99))
            yield* measure("churn: median deregistered -> left the subscriber", percentile(stale, 50))
            yield* measure("churn: longest a deregistered instance was seen by the 50 ms sampler", longestStaleSample)
            yield* Effect.log(
              `[measure] churn: samples ${samples}, samples holding a deregistered instance ${staleSamples}; registrations never seen by the subscriber (came and went while it was disconnected): ${unseen}`
            )
            yield* measure("churn: p99 registered -> seen by the subscriber", percentile(visible, 99))
            yield* measure("churn: longest registered -> seen by the subscriber", Math.max(0, ...visible))
            yield* measure("churn: end of churn -> subscriber equals etcd", convergedAt - ended)
          })
        )
    )
  })
})
