import { describe, expect, it, layer } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { randomUUID } from "node:crypto"
import * as EtcdClient from "../src/EtcdClient.js"
import { EtcdServer } from "../src/testing/index.js"
import * as TtlOption from "../src/TtlOption.js"

describe("TtlOption.make", () => {
  it.effect("a negative or NaN duration is reported as given, not as the zero it decodes to", () =>
    Effect.gen(function* () {
      const cases = [
        [{ heartbeat: "-5 seconds" }, "invalid option heartbeat: must be positive, got -5 seconds"],
        [{ ttl: "-5 seconds" }, "invalid option ttl: must be positive, got -5 seconds"],
        [{ ttl: -5 }, "invalid option ttl: must be positive, got -5"],
        [{ ttl: Number.NaN }, "invalid option ttl: not a duration: NaN"],
        [{ ttl: [-5, 0] }, "invalid option ttl: must be positive, got [-5, 0]"],
        [{ ttl: Duration.zero }, "invalid option ttl: must be positive, got 0"]
      ] as const
      for (const [options, message] of cases) {
        const error = yield* Effect.flip(TtlOption.make(options))
        expect(error._tag).toBe("InvalidOptions")
        expect(error.message).toBe(message)
      }
    })
  )

  it.effect("null (a config value not found, a caller without types) is InvalidOptions, not the default", () =>
    Effect.gen(function* () {
      // the types forbid null: what a JavaScript caller or an untyped config hands over
      const make = TtlOption.make as (options: unknown) => ReturnType<typeof TtlOption.make>
      const cases = [
        [{ heartbeat: null }, "invalid option heartbeat: not a duration: null"],
        [{ heartbeat: "1 second", ttl: null }, "invalid option ttl: not a duration: null"],
        [null, "invalid option ttl option: must be an object or undefined, got null"]
      ] as const
      for (const [options, message] of cases) {
        const error = yield* Effect.flip(make(options))
        expect(error._tag).toBe("InvalidOptions")
        expect(error.message).toBe(message)
      }
      // a missing option still takes its default
      const option = yield* make({ heartbeat: undefined, ttl: "7 seconds" })
      expect(Duration.toMillis(option.heartbeat)).toBe(Duration.toMillis(TtlOption.defaults.heartbeat))
      expect(option.ttlSeconds).toBe(7)
      expect((yield* make(undefined)).ttlSeconds).toBe(10)
    })
  )

  it.effect("a [seconds, nanos] pair is judged by its total, and nanoseconds given as a bigint say so", () =>
    Effect.gen(function* () {
      // 999,999,999 ns: positive, though one part is negative
      const pair = yield* TtlOption.make({ heartbeat: [1, -1] })
      expect(Duration.toNanos(pair.heartbeat)).toEqual(Option.some(999_999_999n))
      const error = yield* Effect.flip(TtlOption.make({ heartbeat: 5n }))
      expect(error.message).toBe("invalid option heartbeat: must be at least 500ms, got 5 nanos")
      const none = yield* Effect.flip(TtlOption.make({ heartbeat: [Infinity, -Infinity] }))
      expect(none.message).toBe("invalid option heartbeat: not a duration: [Infinity, -Infinity]")
    })
  )

  it.effect("a TTL over etcd's largest lease TTL (9,000,000,000 s) is InvalidOptions naming the limit", () =>
    Effect.gen(function* () {
      for (const ttl of [Duration.seconds(2 ** 40), Duration.sum(TtlOption.maxTtl, Duration.millis(1))]) {
        const error = yield* Effect.flip(TtlOption.make({ ttl }))
        expect(error).toMatchObject({ _tag: "InvalidOptions", option: "ttl" })
        expect(error.message).toContain("must be at most 9000000000 seconds (etcd's largest lease TTL)")
      }
      const largest = yield* TtlOption.make({ ttl: TtlOption.maxTtl })
      expect(largest.ttlSeconds).toBe(9_000_000_000)
    })
  )

  it.effect("a heartbeat longer than a timer can wait (2^31 - 1 ms, about 24.8 days) is InvalidOptions", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(TtlOption.make({ heartbeat: "30 days", ttl: "90 days" }))
      expect(error).toMatchObject({ _tag: "InvalidOptions", option: "heartbeat" })
      expect(error.message).toBe(
        "invalid option heartbeat: must be at most 24d 20h 31m 23s 647ms (a timer's limit), got 30 days"
      )
      const longer = yield* Effect.flip(
        TtlOption.make({ heartbeat: Duration.millis(2 ** 31), ttl: Duration.millis(2 ** 33) })
      )
      expect(longer).toMatchObject({ _tag: "InvalidOptions", option: "heartbeat" })
      const longest = yield* TtlOption.make({ heartbeat: TtlOption.maxHeartbeat, ttl: "60 days" })
      expect(Duration.toMillis(longest.heartbeat)).toBe(2 ** 31 - 1)
    })
  )
})

describe("TtlOption limits against etcd 3.4", () => {
  layer(EtcdServer.layer(), { excludeTestServices: true, timeout: "60 seconds" })((it) => {
    it.scoped("the largest TTL registers; a lease one second longer is refused by etcd itself", () =>
      Effect.gen(function* () {
        const server = yield* EtcdServer.EtcdServer
        const client = yield* EtcdClient.make(server.clientOptions)
        const ttl = yield* TtlOption.make({ ttl: TtlOption.maxTtl })
        const service = { key: `/ttl-option-${randomUUID().slice(0, 8)}/a`, value: "http://a:8080", ttl }
        const lease = yield* client.register(service)
        expect(Option.isSome(lease)).toBe(true)
        yield* client.deregister(service)
        const refused = yield* Effect.flip(client.grant(ttl.ttlSeconds + 1))
        expect(refused.message).toContain("too large lease TTL")
      })
    )
  })
})
