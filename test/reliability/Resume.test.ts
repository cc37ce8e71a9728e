/**
 * A watch resuming after a dropped connection, against a real etcd: etcd keeps
 * revision C readable after a compaction at C, but drops the tombstones of the
 * deletes at C. A watch that resumes from exactly C is accepted and never sees
 * those deletes. Found by the churn soak (npm run test:chaos); reproduced here
 * step by step through a proxy that drops the subscriber's connection.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import { randomUUID } from "node:crypto"
import * as Fs from "node:fs/promises"
import * as EtcdClient from "../../src/EtcdClient.js"
import * as Subscriber from "../../src/Subscriber.js"
import { EtcdServer } from "../../src/testing/index.js"
import { awaitInstances, captureLogs, echoFactory, measure, now, tcpProxy, within } from "./support.js"

const run = randomUUID().slice(0, 8)

/** Drops the subscriber's connection through `proxy` and waits until it says Failing. */
const dropConnection = <Req, Res, E>(
  proxy: Effect.Effect.Success<ReturnType<typeof tcpProxy>>,
  subscriber: Subscriber.Subscriber<Req, Res, E>
) =>
  Effect.zipRight(
    proxy.sever,
    subscriber.state.changes.pipe(
      Stream.filter((state) => state._tag === "Failing"),
      Stream.runHead,
      within(10, "the subscriber to notice the dropped connection")
    )
  )

describe("Reliability: resuming a watch", () => {
  layer(EtcdServer.layer(), { excludeTestServices: true, timeout: "60 seconds" })((it) => {
    for (const when of ["right after its listing", "after its watch was established"] as const) {
      it.scoped(
        `a delete at the very revision a compaction kept, while the subscriber was disconnected ${when}, still reaches it`,
        () =>
          Effect.gen(function* () {
            const server = yield* EtcdServer.EtcdServer
            const observer = yield* EtcdClient.make(server.clientOptions)
            const proxy = yield* tcpProxy(server.clientUrl)
            const client = yield* EtcdClient.make({ endpoints: [proxy.url] })
            const prefix = `/reliability-${run}/resume-${when.split(" ")[0]}/`
            const expected = new Map([
              [`${prefix}goes`, "http://goes:8080"],
              [`${prefix}stays`, "http://stays:8080"]
            ])
            yield* observer.put(`${prefix}stays`, "http://stays:8080")
            yield* observer.put(`${prefix}goes`, "http://goes:8080")
            // reconnecting after a second leaves time to delete and compact in between
            const subscriber = yield* Subscriber.make({
              prefix,
              factory: echoFactory,
              reconnect: Schedule.spaced("1 second")
            }).pipe(Effect.provideService(EtcdClient.EtcdClient, client))
            yield* awaitInstances(subscriber, expected, 10, "the subscriber to hold both instances")
            if (when === "after its watch was established") {
              // a change seen through the watch: the watch is live, and has seen the latest revision
              yield* observer.put(`${prefix}stays`, "http://stays:8081")
              expected.set(`${prefix}stays`, "http://stays:8081")
              yield* awaitInstances(subscriber, expected, 10, "the subscriber to see a change through its watch")
            }
            yield* dropConnection(proxy, subscriber)
            // the delete is the next revision after everything the subscriber has seen,
            // and the compaction keeps exactly that revision
            const { revision } = yield* observer.delete(`${prefix}goes`)
            yield* observer.compact(revision)
            const compactedAt = now()
            expected.delete(`${prefix}goes`)
            yield* awaitInstances(
              subscriber,
              expected,
              15,
              "the subscriber to drop the instance deleted at the compaction revision"
            )
            yield* measure(`resume (${when}): compacted while disconnected -> delete applied`, now() - compactedAt)
            expect((yield* subscriber.state.get)._tag).toBe("Live")
          })
      )
    }
  })
})

describe("Reliability: resuming a watch on a wiped cluster", () => {
  it.scoped(
    "wiped while the subscriber was away and caught up past the revision it saw (same cluster id): the replayed history tells, and it lists again",
    () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.make()
        const proxy = yield* tcpProxy(server.clientUrl)
        const client = yield* EtcdClient.make({ endpoints: [proxy.url] })
        const prefix = `/reliability-${run}/wiped/`
        const before = yield* EtcdClient.make(server.clientOptions)
        for (const name of ["a", "b"]) yield* before.put(`${prefix}${name}`, `http://${name}:8080`)
        const subscriber = yield* Subscriber.make({
          prefix,
          factory: echoFactory,
          reconnect: Schedule.spaced("100 millis")
        }).pipe(Effect.provideService(EtcdClient.EtcdClient, client))
        // a change through the watch: the revision the subscriber resumes from is one it was told of
        yield* before.put(`${prefix}c`, "http://c:8080")
        yield* awaitInstances(
          subscriber,
          new Map(["a", "b", "c"].map((name) => [`${prefix}${name}`, `http://${name}:8080`])),
          10,
          "the subscriber to see a change through its watch"
        )
        const seen = yield* before.revision

        yield* proxy.refuse
        yield* dropConnection(proxy, subscriber)
        // wiped and started again with the same flags, so with the same cluster id (the kit's own
        // wipe gives it a new token), then other instances, until the revision is past the one the
        // subscriber saw
        yield* server.kill
        yield* Effect.promise(() => Fs.rm(server.dataDir, { recursive: true, force: true }))
        yield* server.start
        const after = yield* EtcdClient.make(server.clientOptions)
        const expected = new Map<string, string>()
        for (let i = 0; (yield* after.revision) <= seen; i++) {
          yield* after.put(`${prefix}new-${i}`, `http://new-${i}:8080`)
          expected.set(`${prefix}new-${i}`, `http://new-${i}:8080`)
        }
        yield* proxy.accept
        yield* awaitInstances(subscriber, expected, 15, "the subscriber to hold the wiped cluster's instances only")
        expect((yield* subscriber.state.get)._tag).toBe("Live")
      })
  )

  it.scoped(
    "compacted at exactly the last revision it saw, a delete (etcd drops that revision's tombstones): not taken for a wiped cluster",
    () =>
      captureLogs((logs) =>
        Effect.gen(function* () {
          const server = yield* EtcdServer.make()
          const proxy = yield* tcpProxy(server.clientUrl)
          const client = yield* EtcdClient.make({ endpoints: [proxy.url] })
          const observer = yield* EtcdClient.make(server.clientOptions)
          const prefix = `/reliability-${run}/compacted-at-last/`
          const instance = (name: string) => [`${prefix}${name}`, `http://${name}:8080`] as const
          for (const name of ["a", "b"]) yield* observer.put(...instance(name))
          const subscriber = yield* Subscriber.make({
            prefix,
            factory: echoFactory,
            reconnect: Schedule.spaced("100 millis")
          }).pipe(Effect.provideService(EtcdClient.EtcdClient, client))
          // the last change the subscriber is told of is a delete
          const { revision } = yield* observer.delete(`${prefix}a`)
          yield* awaitInstances(subscriber, new Map([instance("b")]), 10, "the subscriber to see the delete")

          yield* proxy.refuse
          yield* dropConnection(proxy, subscriber)
          yield* observer.compact(revision)
          yield* observer.put(...instance("c"))
          yield* proxy.accept
          yield* awaitInstances(subscriber, new Map([instance("b"), instance("c")]), 15, "the subscriber to see c")
          expect(logs.lines.filter((line) => line.includes("listing again"))).toEqual([])
        })
      )
  )
})
