/**
 * Spans that cost nothing when nobody records them.
 *
 * @internal
 */
import * as Effect from "effect/Effect"

/**
 * Effect's built-in tracer, in place when no tracer is provided: it exports
 * nothing, so a span of it is pure cost (a change of the fiber's context and
 * back, and `Effect.fn` also captures a stack trace): a quarter of what a
 * deregistration does before its request (issue 7).
 */
const builtInTracer = Effect.runSync(Effect.tracer)

/**
 * A span named `name` (with `key` as attribute when given), when a tracer
 * that records spans is provided; `self` as it is otherwise.
 */
export const traced =
  (name: string, key?: string) =>
  <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.tracerWith((tracer) =>
      tracer === builtInTracer
        ? self
        : Effect.withSpan(self, name, {
            ...(key === undefined ? {} : { attributes: { key } }),
            captureStackTrace: false
          })
    )
