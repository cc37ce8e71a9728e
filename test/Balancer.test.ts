import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import type * as Subscribable from "effect/Subscribable"
import * as TestClock from "effect/TestClock"
import * as TestServices from "effect/TestServices"
import * as Balancer from "../src/Balancer.js"
import type { Endpoint, Factory } from "../src/Endpoint.js"
import * as EtcdClient from "../src/EtcdClient.js"
import * as Subscriber from "../src/Subscriber.js"

/** An endpoint that answers with its own name. */
const named =
  (name: string): Endpoint<void, string> =>
  () =>
    Effect.succeed(name)

const callMany = <E>(balancer: Balancer.Balancer<void, string, never, E>, n: number) =>
  Effect.forEach(Array.from({ length: n }), () => Effect.flatMap(balancer, (endpoint) => endpoint()))

describe("Balancer", () => {
  it.effect("round robin visits every endpoint in turn, from a fixed array or an effect", () =>
    Effect.gen(function* () {
      const endpoints = ["a", "b", "c"].map(named)
      for (const balancer of [
        Balancer.roundRobin(Effect.succeed(endpoints)),
        Balancer.roundRobin(Effect.sync(() => endpoints))
      ]) {
        const names = yield* callMany(balancer, 5)
        // yield* in Effect.gen picks from the same turn
        names.push(yield* Effect.flatMap(balancer, (endpoint) => endpoint()))
        const endpoint = yield* balancer
        names.push(yield* endpoint())
        expect(names).toEqual(["a", "b", "c", "a", "b", "c", "a"])
      }
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
      // the same draws from a source that is run on every pick
      const fromEffect = Balancer.random(Effect.sync(() => endpoints))
      expect(yield* callMany(fromEffect, 50).pipe(Effect.withRandom(Random.make("seed-1")))).toEqual(first)
    })
  )

  it.effect("an empty set fails with NoEndpoints, for both balancers", () =>
    Effect.gen(function* () {
      const empty = Effect.succeed<ReadonlyArray<Endpoint<void, string>>>([])
      const rr = yield* Effect.flip(Balancer.roundRobin(empty))
      const rnd = yield* Effect.flip(Balancer.random(empty))
      const viaGen = yield* Effect.flip(
        Effect.gen(function* () {
          return yield* Balancer.roundRobin(empty)
        })
      )
      const fromEffect = yield* Effect.flip(Balancer.roundRobin(Effect.sync(() => [])))
      expect(rr).toBeInstanceOf(Balancer.NoEndpoints)
      expect(viaGen).toBeInstanceOf(Balancer.NoEndpoints)
      expect(fromEffect).toBeInstanceOf(Balancer.NoEndpoints)
      expect(viaGen.message).toBe("no endpoints available")
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

// ---- over a Subscriber (in-memory etcd) ----

/** Waits (on the subscribable's changes, never on a sleep) until `predicate` holds; 10 s of real time at most. */
const waitFor = <A>(subscribable: Subscribable.Subscribable<A>, predicate: (a: A) => boolean) =>
  TestServices.provideWithLive(
    Effect.flatMap(Stream.runHead(Stream.filter(subscribable.changes, predicate)), (a) =>
      Option.isSome(a) ? Effect.succeed(a.value) : Effect.dieMessage("changes ended")
    ),
    (effect) => Effect.timeoutFail(effect, { duration: "10 seconds", onTimeout: () => new Error("timed out") })
  ).pipe(Effect.orDie)

/** An endpoint per instance that answers with the instance's value. */
const valueFactory: Factory<void, string> = (value) => Effect.succeed(() => Effect.succeed(value))

const put = (key: string, value: string) => Effect.flatMap(EtcdClient.MemoryEtcd, (m) => m.client.put(key, value))
const del = (key: string) => Effect.flatMap(EtcdClient.MemoryEtcd, (m) => m.client.delete(key))

const waitForCount = (subscriber: Subscriber.Subscriber<void, string>, n: number) =>
  waitFor(subscriber.endpointSet, (set) => set.endpoints.length === n)

/** A pick through `yield*` in Effect.gen, then calling the endpoint. */
const genCall = <E>(balancer: Balancer.Balancer<void, string, never, E>) =>
  Effect.gen(function* () {
    const endpoint = yield* balancer
    return yield* endpoint()
  })

describe("Balancer over a Subscriber", () => {
  it.effect(
    "round robin: yield*, flatMap and whileLoop picks share one turn, and the turn goes on over a new set",
    () =>
      Effect.gen(function* () {
        yield* put("/svc/a", "a")
        yield* put("/svc/b", "b")
        yield* put("/svc/c", "c")
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory: valueFactory })
        yield* waitForCount(subscriber, 3)
        const balancer = Balancer.roundRobin(subscriber)
        const names: Array<string> = []
        names.push(yield* genCall(balancer))
        names.push(yield* Effect.flatMap(balancer, (endpoint) => endpoint()))
        names.push(yield* genCall(balancer))
        let i = 0
        yield* Effect.whileLoop({
          while: () => i++ < 2,
          body: () => Effect.flatMap(balancer, (endpoint) => endpoint()),
          step: (name) => names.push(name)
        })
        expect(names).toEqual(["a", "b", "c", "a", "b"])
        // the counter is at 5: over the new set of 4 it goes on at 5 % 4 = 1
        yield* put("/svc/d", "d")
        yield* waitForCount(subscriber, 4)
        const after = [yield* genCall(balancer), yield* Effect.flatMap(balancer, (endpoint) => endpoint())]
        expect(after).toEqual(["b", "c"])
        // and over a smaller one
        yield* del("/svc/a")
        yield* waitForCount(subscriber, 3)
        // the counter is at 7: index 7 % 3 = 1 of b, c, d
        expect(yield* genCall(balancer)).toBe("c")
      }).pipe(Effect.scoped, Effect.provide(EtcdClient.layerMemory))
  )

  it.effect(
    "round robin over a subscriber: a successful pick by yield* is over in the generator's own step, a failure goes to the fiber",
    () =>
      Effect.gen(function* () {
        yield* put("/svc/a", "a")
        yield* put("/svc/b", "b")
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory: valueFactory })
        yield* waitForCount(subscriber, 2)
        const balancer = Balancer.roundRobin(subscriber)
        // what `yield*` does with the balancer: a success is the delegated iterator's return value
        // on its first step, so the generator goes on without a step of the fiber's run loop
        const steps: Array<IteratorResult<unknown, Endpoint<void, string>>> = []
        for (let i = 0; i < 3; i++) steps.push(balancer[Symbol.iterator]().next())
        expect(steps.map((step) => step.done)).toEqual([true, true, true])
        const names: Array<string> = []
        for (const step of steps) if (step.done === true) names.push(yield* step.value())
        expect(names).toEqual(["a", "b", "a"])
        // the turn is the one flatMap and a later yield* share
        expect(yield* Effect.flatMap(balancer, (endpoint) => endpoint())).toBe("b")
        expect(yield* genCall(balancer)).toBe("a")
        // a failure is yielded to the fiber, which fails the generator with it
        yield* del("/svc/a")
        yield* del("/svc/b")
        yield* waitForCount(subscriber, 0)
        const failed = balancer[Symbol.iterator]().next()
        expect(failed.done).toBe(false)
        const error = yield* Effect.flip(genCall(balancer))
        expect(error).toBeInstanceOf(Balancer.NoEndpoints)
      }).pipe(Effect.scoped, Effect.provide(EtcdClient.layerMemory))
  )

  it.effect("round robin over an empty subscriber fails with NoEndpoints naming the prefix, however it is run", () =>
    Effect.gen(function* () {
      yield* put("/svc/a", "a")
      const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory: valueFactory })
      yield* waitForCount(subscriber, 1)
      const balancer = Balancer.roundRobin(subscriber)
      yield* del("/svc/a")
      yield* waitForCount(subscriber, 0)
      const viaGen = yield* Effect.flip(genCall(balancer))
      const viaFlatMap = yield* Effect.flip(Effect.flatMap(balancer, (endpoint) => endpoint()))
      for (const error of [viaGen, viaFlatMap]) {
        expect(error).toBeInstanceOf(Balancer.NoEndpoints)
        expect(error._tag === "NoEndpoints" && error.prefix).toBe("/svc/")
      }
      // the failure can be handled inside Effect.gen by tag
      const handled = yield* genCall(balancer).pipe(Effect.catchTag("NoEndpoints", (e) => Effect.succeed(e.message)))
      expect(handled).toBe("no endpoints available under /svc/")
      // and the endpoints come back
      yield* put("/svc/b", "b")
      yield* waitForCount(subscriber, 1)
      expect(yield* genCall(balancer)).toBe("b")
    }).pipe(Effect.scoped, Effect.provide(EtcdClient.layerMemory))
  )

  it.effect("round robin over an invalidated subscriber fails with its EtcdError, however it is run", () =>
    Effect.gen(function* () {
      const memory = yield* EtcdClient.MemoryEtcd
      yield* put("/svc/a", "a")
      const subscriber = yield* Subscriber.make({
        prefix: "/svc/",
        factory: valueFactory,
        invalidateOnError: "30 seconds",
        reconnect: Schedule.spaced("10 seconds")
      })
      yield* waitForCount(subscriber, 1)
      const balancer = Balancer.roundRobin(subscriber)
      yield* memory.setUnavailable
      yield* waitFor(subscriber.state, (state) => state._tag === "Failing")
      yield* TestClock.adjust("30 seconds")
      yield* waitFor(subscriber.endpointSet, (set) => Option.isSome(set.error))
      const viaGen = yield* Effect.flip(genCall(balancer))
      const viaFlatMap = yield* Effect.flip(Effect.flatMap(balancer, (endpoint) => endpoint()))
      for (const error of [viaGen, viaFlatMap]) {
        expect(error._tag).toBe("EtcdError")
        expect(error._tag === "EtcdError" && error.reason).toBe("Unavailable")
      }
    }).pipe(Effect.scoped, Effect.provide(EtcdClient.layerMemory))
  )

  it.effect(
    "over hundreds of instances, some without an endpoint, picks follow the key order before and after changes",
    () =>
      Effect.gen(function* () {
        const name = (i: number) => `/svc/${String(i).padStart(4, "0")}`
        // every 7th instance's factory fails: it has no endpoint, and no pick may land on it
        const factory: Factory<void, string, never, string> = (value) =>
          value.startsWith("bad") ? Effect.fail(value) : Effect.succeed(() => Effect.succeed(value))
        const value = (i: number, round: string) => (i % 7 === 0 ? `bad${i}` : `${round}${i}`)
        for (let i = 0; i < 600; i += 2) yield* put(name(i), value(i, "a"))
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory }).pipe(
          Effect.provide(Logger.remove(Logger.defaultLogger))
        )
        const expected = new Map<string, string>()
        for (let i = 0; i < 600; i += 2) if (i % 7 !== 0) expected.set(name(i), value(i, "a"))
        // once the last change is in (the watch delivers changes in order), the set is the expected one
        const check = (lastKey: string, lastValue: string) =>
          Effect.gen(function* () {
            yield* waitFor(subscriber.instances, (instances) => instances.get(lastKey) === lastValue)
            const set = yield* subscriber.endpointSet.get
            const inOrder = [...expected.keys()].sort().map((key) => expected.get(key)!)
            expect(set.size).toBe(inOrder.length)
            const balancer = Balancer.roundRobin(subscriber)
            // a new balancer's turn starts at 0: two rounds over the set, in key order
            const picked = yield* Effect.forEach(Array.from({ length: 2 * inOrder.length }), () => genCall(balancer))
            expect(picked).toEqual([...inOrder, ...inOrder])
            const drawn = yield* Effect.forEach(Array.from({ length: 20 * inOrder.length }), () =>
              genCall(Balancer.random(subscriber))
            ).pipe(Effect.withRandom(Random.make("seed-2")))
            expect(new Set(drawn)).toEqual(new Set(inOrder))
          })
        yield* check(name(598), value(598, "a"))
        // one batch of changes spread over every leaf: odd keys put, a third of the even ones deleted,
        // a run of new keys past the last one
        yield* Effect.forEach(
          Array.from({ length: 700 }, (_, i) => i),
          (i) => {
            if (i % 2 === 1) {
              if (i % 7 !== 0) expected.set(name(i), value(i, "b"))
              return put(name(i), value(i, "b"))
            }
            if (i % 3 === 0 && i < 600) {
              expected.delete(name(i))
              return del(name(i))
            }
            if (i >= 600) {
              if (i % 7 !== 0) expected.set(name(i), value(i, "c"))
              return put(name(i), value(i, "c"))
            }
            return Effect.void
          },
          { discard: true }
        )
        yield* check(name(699), value(699, "b"))
      }).pipe(Effect.scoped, Effect.provide(EtcdClient.layerMemory))
  )

  it.effect("random over a subscriber draws from Effect's Random", () =>
    Effect.gen(function* () {
      for (const name of ["a", "b", "c", "d"]) yield* put(`/svc/${name}`, name)
      const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory: valueFactory })
      yield* waitForCount(subscriber, 4)
      const balancer = Balancer.random(subscriber)
      const draw = Effect.forEach(Array.from({ length: 40 }), () => genCall(balancer))
      const first = yield* draw.pipe(Effect.withRandom(Random.make("seed-1")))
      const second = yield* draw.pipe(Effect.withRandom(Random.make("seed-1")))
      expect(second).toEqual(first)
      expect(new Set(first)).toEqual(new Set(["a", "b", "c", "d"]))
    }).pipe(Effect.scoped, Effect.provide(EtcdClient.layerMemory))
  )
})
