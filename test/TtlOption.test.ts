import { describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as TtlOption from "../src/TtlOption.js"

describe("TtlOption.make", () => {
  it.effect("a negative or NaN duration is reported as given, not as the zero it decodes to", () =>
    Effect.gen(function* () {
      const cases = [
        [{ heartbeat: "-5 seconds" }, "invalid option heartbeat: must be positive, got -5 seconds"],
        [{ ttl: "-5 seconds" }, "invalid option ttl: must be positive, got -5 seconds"],
        [{ ttl: -5 }, "invalid option ttl: must be positive, got -5"],
        [{ ttl: Number.NaN }, "invalid option ttl: must be positive, got NaN"],
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
})
