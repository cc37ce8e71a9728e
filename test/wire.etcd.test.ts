/**
 * A response from a real etcd that does not decode (our decoders made to fail
 * on chosen messages): the request or the watch fails with a clear error, the
 * member is not blamed for it, and the next request goes through at once.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import { vi } from "vitest"
import * as EtcdClient from "../src/EtcdClient.js"
import * as EtcdServer from "../src/testing/EtcdServer.js"
import type * as Wire from "../src/internal/wire.js"

// how many of the next watch / range responses do not decode
const undecodable = vi.hoisted(() => ({ watch: 0, range: 0 }))
vi.mock("../src/internal/wire.js", async (importOriginal) => {
  const wire = await importOriginal<typeof Wire>()
  return {
    ...wire,
    decodeWatchResponse: (buf: Buffer) =>
      undecodable.watch > 0 && undecodable.watch-- > 0
        ? new wire.Undecodable("a WatchResponse (injected) did not decode")
        : wire.decodeWatchResponse(buf),
    decodeRangeResponse: (buf: Buffer) =>
      undecodable.range > 0 && undecodable.range-- > 0
        ? new wire.Undecodable("a RangeResponse (injected) did not decode")
        : wire.decodeRangeResponse(buf)
  }
})

describe("a response that does not decode", () => {
  it.scopedLive(
    "ends a watch with a clear error; the member still serves the next watch",
    () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.make()
        const client = yield* EtcdClient.make(server.clientOptions)
        const listing = yield* client.list("/p/")
        const watch = (from: number) => client.watch("/p/", { fromRevision: from, cluster: listing.cluster })
        // the watch sees /p/0 (its message decodes), then /p/a, whose message does not
        yield* client.put("/p/0", "0")
        const first = yield* watch(listing.revision + 1).pipe(
          Stream.tap((event) =>
            event._tag === "Put" && event.key === "/p/0"
              ? Effect.andThen(
                  Effect.sync(() => {
                    undecodable.watch = 1
                  }),
                  client.put("/p/a", "1")
                )
              : Effect.void
          ),
          Stream.runDrain,
          Effect.flip
        )
        expect([first.operation, first.reason, first.detail]).toEqual([
          "watch",
          "Other",
          "a WatchResponse (injected) did not decode"
        ])
        // the same member: a new watch from the listing sees both puts
        const seen = yield* watch(listing.revision + 1).pipe(
          Stream.filter((event) => event._tag === "Put"),
          Stream.take(2),
          Stream.runCollect
        )
        expect([...seen].map((event) => (event._tag === "Put" ? [event.key, event.value] : []))).toEqual([
          ["/p/0", "0"],
          ["/p/a", "1"]
        ])
      }),
    30_000
  )

  it.scopedLive(
    "fails a listing once, not retried and not counted against the member: the next listing goes through",
    () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.make()
        const client = yield* EtcdClient.make(server.clientOptions)
        yield* client.put("/q/a", "1")
        undecodable.range = 1
        const error = yield* Effect.flip(client.list("/q/"))
        expect([error.operation, error.reason, error.detail]).toEqual([
          "list",
          "Other",
          "a RangeResponse (injected) did not decode"
        ])
        expect(undecodable.range).toBe(0)
        // twice, as a member whose breaker counted two failures would refuse the next request
        undecodable.range = 1
        yield* Effect.flip(client.list("/q/"))
        const listed = yield* client.list("/q/")
        expect(listed.entries.map((entry) => [entry.key, entry.value])).toEqual([["/q/a", "1"]])
      }),
    30_000
  )
})
