/**
 * The endpoint scopes a Subscriber hands to its factory: they behave like scopes
 * of `Scope.make`, whether the factory uses them at once, later, or never.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import type { Factory } from "../src/Endpoint.js"
import * as EtcdClient from "../src/EtcdClient.js"
import * as Subscriber from "../src/Subscriber.js"
import { waitFor } from "./testing-helpers.js"

const onMemory = <A, E>(
  body: Effect.Effect<A, E, EtcdClient.EtcdClient | EtcdClient.MemoryEtcdControl | Scope.Scope>
) => Effect.scoped(body).pipe(Effect.provide(EtcdClient.layerMemory))

const put = (key: string, value: string) => Effect.flatMap(EtcdClient.MemoryEtcd, (m) => m.client.put(key, value))
const del = (key: string) => Effect.flatMap(EtcdClient.MemoryEtcd, (m) => m.client.delete(key))

const endpoint = (instance: string) => (request: string) => Effect.succeed(`${instance} got ${request}`)

/**
 * A factory that does not touch its scope, but keeps it: `use(instance)` adds a
 * finalizer to it later, from outside the factory.
 */
const keepingFactory = Effect.gen(function* () {
  const kept = new Map<string, Scope.Scope>()
  const closed = yield* Ref.make<ReadonlyArray<string>>([])
  const factory: Factory<string, string> = (instance) =>
    Effect.map(Effect.scope, (scope) => {
      kept.set(instance, scope)
      return endpoint(instance)
    })
  const use = (instance: string) =>
    Scope.addFinalizer(
      kept.get(instance)!,
      Ref.update(closed, (xs) => [...xs, instance])
    )
  return { factory, use, closed: Ref.get(closed) }
})

describe("Subscriber endpoint scopes", () => {
  it.effect("a scope its factory kept and uses later is closed when its instance leaves", () =>
    onMemory(
      Effect.gen(function* () {
        yield* put("/svc/a", "a")
        yield* put("/svc/b", "b")
        const { closed, factory, use } = yield* keepingFactory
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory })
        yield* use("a")
        yield* use("b")
        expect(yield* closed).toEqual([])
        yield* del("/svc/a")
        yield* waitFor(subscriber.instances, (m) => m.size === 1, "a gone")
        expect(yield* closed).toEqual(["a"])
        // a value change is a new instance: the old scope closes
        yield* put("/svc/b", "b2")
        yield* waitFor(subscriber.instances, (m) => m.get("/svc/b") === "b2", "b changed")
        expect(yield* closed).toEqual(["a", "b"])
      })
    )
  )

  it.effect("a finalizer added to the scope of an instance that has left runs at once", () =>
    onMemory(
      Effect.gen(function* () {
        yield* put("/svc/a", "a")
        const { closed, factory, use } = yield* keepingFactory
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory })
        yield* del("/svc/a")
        yield* waitFor(subscriber.instances, (m) => m.size === 0, "a gone")
        yield* use("a")
        expect(yield* closed).toEqual(["a"])
        // and the same key coming back is another instance, with a scope of its own
        yield* put("/svc/a", "a")
        yield* waitFor(subscriber.instances, (m) => m.size === 1, "a back")
        yield* use("a")
        expect(yield* closed).toEqual(["a"])
      })
    )
  )

  it.effect("closing the subscriber's scope closes the scopes used late, once", () =>
    onMemory(
      Effect.gen(function* () {
        yield* put("/svc/a", "a")
        yield* put("/svc/b", "b")
        const { closed, factory, use } = yield* keepingFactory
        yield* Effect.scoped(
          Effect.gen(function* () {
            yield* Subscriber.make({ prefix: "/svc/", factory })
            yield* use("b")
          })
        )
        expect(yield* closed).toEqual(["b"])
        yield* use("a")
        expect(yield* closed).toEqual(["b", "a"])
      })
    )
  )

  it.effect(
    "a fiber forked into the scope is interrupted when its instance leaves; a forked child scope is closed",
    () =>
      onMemory(
        Effect.gen(function* () {
          yield* put("/svc/a", "a")
          const started = yield* Deferred.make<void>()
          const interrupted = yield* Deferred.make<void>()
          const childClosed = yield* Deferred.make<void>()
          const factory: Factory<string, string> = (instance) =>
            Effect.gen(function* () {
              yield* Effect.forkScoped(
                Effect.zipRight(Deferred.succeed(started, undefined), Effect.never).pipe(
                  Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined))
                )
              )
              const scope = yield* Effect.scope
              const child = yield* Scope.fork(scope, ExecutionStrategy.sequential)
              yield* Scope.addFinalizer(child, Deferred.succeed(childClosed, undefined))
              return endpoint(instance)
            })
          const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory })
          yield* Deferred.await(started)
          expect(yield* Deferred.isDone(interrupted)).toBe(false)
          yield* del("/svc/a")
          yield* waitFor(subscriber.instances, (m) => m.size === 0, "a gone")
          yield* Deferred.await(interrupted)
          yield* Deferred.await(childClosed)
        })
      )
  )

  it.effect("a fiber forked into the scope that ends by itself leaves nothing behind", () =>
    onMemory(
      Effect.gen(function* () {
        yield* put("/svc/a", "a")
        const fibers: Array<Fiber.RuntimeFiber<void>> = []
        const factory: Factory<string, string> = (instance) =>
          Effect.gen(function* () {
            fibers.push(yield* Effect.forkScoped(Effect.void))
            return endpoint(instance)
          })
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory })
        yield* Fiber.join(fibers[0]!)
        yield* del("/svc/a")
        yield* waitFor(subscriber.instances, (m) => m.size === 0, "a gone")
      })
    )
  )

  /**
   * A factory whose endpoints' scopes close slowly: each finalizer waits for
   * `release`, then records its instance (and `closedA` says when "a" did).
   */
  const slowClosing = Effect.gen(function* () {
    const release = yield* Deferred.make<void>()
    const closedA = yield* Deferred.make<void>()
    const closed = yield* Ref.make<ReadonlyArray<string>>([])
    const factory: Factory<string, string> = (instance) =>
      Effect.as(
        Effect.addFinalizer(() =>
          Deferred.await(release).pipe(
            Effect.zipRight(Ref.update(closed, (xs) => [...xs, instance])),
            Effect.zipRight(instance === "a" ? Deferred.succeed(closedA, undefined) : Effect.void)
          )
        ),
        endpoint(instance)
      )
    return { factory, release, closedA, closed: Ref.get(closed) }
  })

  it.effect("an endpoint scope that takes long to close holds up no later change", () =>
    onMemory(
      Effect.gen(function* () {
        yield* put("/svc/a", "a")
        const { closed, closedA, factory, release } = yield* slowClosing
        const subscriber = yield* Subscriber.make({ prefix: "/svc/", factory })
        yield* del("/svc/a")
        yield* waitFor(subscriber.instances, (m) => m.size === 0, "a gone")
        // a's scope is still closing (its finalizer waits): the next change comes through all the same
        yield* put("/svc/b", "b")
        yield* waitFor(subscriber.instances, (m) => m.has("/svc/b"), "b added")
        expect((yield* subscriber.endpoints).length).toBe(1)
        expect(yield* closed).toEqual([])
        yield* Deferred.succeed(release, undefined)
        yield* Deferred.await(closedA)
        expect(yield* closed).toEqual(["a"])
      })
    )
  )

  it.effect("closing the subscriber while endpoint scopes are still closing closes each of them, once", () =>
    onMemory(
      Effect.gen(function* () {
        yield* put("/svc/a", "a")
        yield* put("/svc/b", "b")
        yield* put("/svc/c", "c")
        const { closed, factory, release } = yield* slowClosing
        const scope = yield* Scope.make()
        const subscriber = yield* Scope.extend(Subscriber.make({ prefix: "/svc/", factory }), scope)
        yield* waitFor(subscriber.instances, (m) => m.size === 3, "a, b and c")
        // a's scope starts closing and waits; b's waits behind it; c is still there
        yield* del("/svc/a")
        yield* waitFor(subscriber.instances, (m) => !m.has("/svc/a"), "a gone")
        yield* del("/svc/b")
        yield* waitFor(subscriber.instances, (m) => !m.has("/svc/b"), "b gone")
        const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(closing)
        expect(yield* closed).toEqual(["a", "b", "c"])
      })
    )
  )
})
