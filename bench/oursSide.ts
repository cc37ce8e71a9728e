/**
 * Our side: effect-sd-etcd's Subscriber and Registrar, driven the way a user
 * would, over one EtcdClient per worker process.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Scope from "effect/Scope"
import * as EtcdClient from "../src/EtcdClient.js"
import * as Registrar from "../src/Registrar.js"
import * as Subscriber from "../src/Subscriber.js"
import * as TtlOption from "../src/TtlOption.js"
import type { RegistrarSide, SideOptions, SubscriberSide } from "./side.js"
import type { ViewSnapshot } from "./view.js"

/** The endpoint the benchmark's factory makes: it answers with its instance, which it also carries. */
export interface BenchEndpoint {
  (request: unknown): Effect.Effect<string>
  readonly instance: string
}

/**
 * One client per worker. Info logs (one per registration) are filtered out, as
 * a production setup would: printing them would measure the terminal.
 */
const client = (options: SideOptions) =>
  ManagedRuntime.make(
    Layer.merge(EtcdClient.layer({ endpoints: [options.endpoint] }), Logger.minimumLogLevel(LogLevel.Warning))
  )

export const subscriber = async (options: SideOptions): Promise<SubscriberSide> => {
  const runtime = client(options)
  await runtime.runPromise(Effect.void)
  return {
    subscribe: async (prefix, tracker) => {
      const scope = await runtime.runPromise(Scope.make())
      // the size as the set has it; the endpoints array (built on first read) only when a wait
      // asks whether an instance is there, as the raw side's Map answers at once
      const view = (set: Subscriber.EndpointSet<unknown, string>): ViewSnapshot => ({
        size: set.size,
        has: (instance) => (set.endpoints as ReadonlyArray<BenchEndpoint>).some((e) => e.instance === instance),
        values: () => (set.endpoints as ReadonlyArray<BenchEndpoint>).map((e) => e.instance)
      })
      await runtime.runPromise(
        Effect.gen(function* () {
          const sub = yield* Subscriber.make<unknown, string>({
            prefix,
            // the least a factory can do, as the raw Map keeps just the instance string
            factory: (instance) =>
              Effect.sync(() => {
                tracker.added(instance)
                return Object.assign((_: unknown) => Effect.succeed(instance), { instance }) as BenchEndpoint
              })
          })
          // followed as an application should on a hot path: Subscriber.follow waits for the next
          // change without a stream (bench/NOTES.md: a stream drained by runForEach kept the
          // snapshots it had passed reachable; pulled, each change went through the channel executor)
          const follow = Subscriber.follow(sub.endpointSet, (set) => Effect.sync(() => tracker.changed(view(set))))
          yield* Effect.forkIn(follow, scope)
        }).pipe(Scope.extend(scope))
      )
      return () => runtime.runPromise(Scope.close(scope, Exit.void))
    },
    close: () => runtime.dispose()
  }
}

export const registrar = async (options: SideOptions): Promise<RegistrarSide> => {
  const runtime = client(options)
  const ttl = await runtime.runPromise(
    TtlOption.make({ heartbeat: `${options.heartbeatMillis} millis`, ttl: `${options.ttlSeconds} seconds` })
  )
  const scopes = new Map<string, Scope.CloseableScope>()
  return {
    // one runPromise per operation, as the raw side makes one call
    register: async (key, value) => {
      await runtime.runPromise(
        Effect.flatMap(Scope.make(), (scope) => {
          scopes.set(key, scope)
          return Scope.extend(Registrar.make({ key, value, ttl }), scope)
        })
      )
    },
    deregister: async (key) => {
      const scope = scopes.get(key)
      if (scope === undefined) throw new Error(`not registered: ${key}`)
      scopes.delete(key)
      await runtime.runPromise(Scope.close(scope, Exit.void))
    },
    close: async () => {
      for (const scope of scopes.values()) await runtime.runPromise(Scope.close(scope, Exit.void))
      scopes.clear()
      await runtime.dispose()
    }
  }
}
