/**
 * Runs a stream in the background of a test and hands its elements over one at
 * a time, so a test can wait for exactly the events it expects.
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"

type Item<A, E> =
  | { readonly _tag: "Element"; readonly value: A }
  | { readonly _tag: "Failed"; readonly error: E }
  | { readonly _tag: "Ended" }
  | { readonly _tag: "Died"; readonly cause: Cause.Cause<E> }

/**
 * A stream running in the background of a test.
 */
export interface WatchProbe<A, E> {
  /** Waits for the next element; dies if the stream fails or ends first. */
  readonly next: Effect.Effect<A>
  /** Waits for the stream to fail and returns the error; dies if an element or the end comes first. */
  readonly failure: Effect.Effect<E>
  /** How many elements (or endings) have arrived and not been taken yet. */
  readonly pending: Effect.Effect<number>
}

const describeItem = <A, E>(item: Item<A, E>): string =>
  item._tag === "Element"
    ? `element ${JSON.stringify(item.value)}`
    : item._tag === "Failed"
      ? `failure ${String(item.error)}`
      : item._tag === "Ended"
        ? "end of stream"
        : `defect ${Cause.pretty(item.cause)}`

/**
 * Forks `stream` into the current scope (it is interrupted when the scope
 * closes) and returns a probe on it.
 */
export const probe = <A, E>(stream: Stream.Stream<A, E>): Effect.Effect<WatchProbe<A, E>, never, Scope.Scope> =>
  Effect.gen(function* () {
    const queue = yield* Queue.unbounded<Item<A, E>>()
    yield* stream.pipe(
      Stream.runForEach((value) => Queue.offer(queue, { _tag: "Element", value })),
      Effect.matchCauseEffect({
        onSuccess: () => Queue.offer(queue, { _tag: "Ended" }),
        onFailure: (cause) =>
          Cause.isInterruptedOnly(cause)
            ? Effect.void
            : Queue.offer(
                queue,
                Option.match(Cause.failureOption(cause), {
                  onSome: (error): Item<A, E> => ({ _tag: "Failed", error }),
                  onNone: (): Item<A, E> => ({ _tag: "Died", cause })
                })
              )
      }),
      Effect.forkScoped
    )
    return {
      next: Effect.flatMap(Queue.take(queue), (item) =>
        item._tag === "Element"
          ? Effect.succeed(item.value)
          : Effect.dieMessage(`expected an element, got ${describeItem(item)}`)
      ),
      failure: Effect.flatMap(Queue.take(queue), (item) =>
        item._tag === "Failed"
          ? Effect.succeed(item.error)
          : Effect.dieMessage(`expected a failure, got ${describeItem(item)}`)
      ),
      pending: Queue.size(queue)
    }
  })
