/**
 * Endpoints and endpoint factories (go-kit's `endpoint.Endpoint` and `sd.Factory`).
 *
 * @since 0.1.0
 */
import type * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"

/**
 * One way to call an upstream service: a request in, an Effect of a response out.
 *
 * @since 0.1.0
 * @category models
 */
export type Endpoint<Req, Res, E = never> = (request: Req) => Effect.Effect<Res, E>

/**
 * Turns an instance string (the value stored in etcd, e.g. `http://10.0.0.1:8080`)
 * into an endpoint. The effect is scoped: whatever it acquires (a connection
 * pool, an HTTP client, ...) is released when the instance leaves or its value
 * changes (go-kit's `io.Closer`), after the change is published. Scopes close
 * one after another in a fiber of their own: one that takes long to close (a
 * graceful drain) holds up no later change, and closing the subscriber waits
 * for it. A failure, typed (`FE`) or a defect, skips the instance.
 *
 * The subscriber runs factories one after another, in its own fiber: one that
 * hangs holds up every later change, unless the subscriber's `factoryTimeout`
 * bounds it. An effect that cannot use its context (`Effect.succeed(endpoint)`,
 * `Effect.sync(() => endpoint)`, `Effect.fail(...)`) is cheapest: it runs
 * without an endpoint scope or a turn of the run loop, about 1.5 µs less per
 * instance than an effect that may acquire something.
 *
 * @since 0.1.0
 * @category models
 */
export type Factory<Req, Res, E = never, FE = never, R = never> = (
  instance: string
) => Effect.Effect<Endpoint<Req, Res, E>, FE, R | Scope.Scope>
