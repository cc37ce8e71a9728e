import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Ref from "effect/Ref"
import * as Balancer from "../src/Balancer.js"
import type { Endpoint } from "../src/Endpoint.js"

/** An endpoint that answers with its own name. */
const named =
  (name: string): Endpoint<void, string> =>
  () =>
    Effect.succeed(name)

const callMany = <E>(balancer: Balancer.Balancer<void, string, never, E>, n: number) =>
  Effect.forEach(Array.from({ length: n }), () => Effect.flatMap(balancer, (endpoint) => endpoint()))

describe("Balancer", () => {
  it.effect("round robin visits every endpoint in turn", () =>
    Effect.gen(function* () {
      const endpoints = ["a", "b", "c"].map(named)
      const balancer = Balancer.roundRobin(Effect.succeed(endpoints))
      const names = yield* callMany(balancer, 7)
      expect(names).toEqual(["a", "b", "c", "a", "b", "c", "a"])
    })
  )

  it.effect("round robin goes on over the new set when the endpoints change", () =>
    Effect.gen(function* () {
      const source = yield* Ref.make<ReadonlyArray<Endpoint<void, string>>>(["a", "b"].map(named))
      const balancer = Balancer.roundRobin(Ref.get(source))
      const before = yield* callMany(balancer, 3)
      yield* Ref.set(source, ["x", "y", "z", "w"].map(named))
      const after = yield* callMany(balancer, 4)
      expect(before).toEqual(["a", "b", "a"])
      // the counter is at 3: the turn goes on from there over the new set
      expect(after).toEqual(["w", "x", "y", "z"])
    })
  )

  it.effect("random with a seeded Random gives the same sequence twice", () =>
    Effect.gen(function* () {
      const endpoints = ["a", "b", "c", "d", "e"].map(named)
      const balancer = Balancer.random(Effect.succeed(endpoints))
      const first = yield* callMany(balancer, 50).pipe(Effect.withRandom(Random.make("seed-1")))
      const second = yield* callMany(balancer, 50).pipe(Effect.withRandom(Random.make("seed-1")))
      const other = yield* callMany(balancer, 50).pipe(Effect.withRandom(Random.make("seed-2")))
      expect(second).toEqual(first)
      expect(other).not.toEqual(first)
      // every endpoint gets picked
      expect(new Set(first)).toEqual(new Set(["a", "b", "c", "d", "e"]))
    })
  )

  it.effect("an empty set fails with NoEndpoints, for both balancers", () =>
    Effect.gen(function* () {
      const empty = Effect.succeed<ReadonlyArray<Endpoint<void, string>>>([])
      const rr = yield* Effect.flip(Balancer.roundRobin(empty))
      const rnd = yield* Effect.flip(Balancer.random(empty))
      expect(rr).toBeInstanceOf(Balancer.NoEndpoints)
      expect(rnd._tag).toBe("NoEndpoints")
      const handled = yield* Balancer.roundRobin(empty).pipe(
        Effect.map(() => "picked"),
        Effect.catchTag("NoEndpoints", (e) => Effect.succeed(e.message))
      )
      expect(handled).toBe("no endpoints available")
    })
  )

  it.effect("the source's failure passes through", () =>
    Effect.gen(function* () {
      const failing = Effect.fail("source down" as const)
      const error = yield* Effect.flip(Balancer.roundRobin<void, string, never, "source down">(failing))
      expect(error).toBe("source down")
      expect(Option.isNone(yield* Effect.option(failing))).toBe(true)
    })
  )
})
