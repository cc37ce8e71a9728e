/**
 * Retries a call through a balancer (go-kit's `lb.Retry` and
 * `lb.RetryWithCallback`), built on `Effect.retry`: a fresh endpoint for every
 * attempt, a timeout for the whole call, and the attempts counted and their
 * errors kept.
 *
 * Every attempt is given the same request. A request that can be used once
 * only (an HTTP body that is a one-shot stream) has been used up by the first
 * attempt: give it a body that can be read again.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Effectable from "effect/Effectable"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import type * as RuntimeFlags from "effect/RuntimeFlags"
import { SingleShotGen, YieldWrap } from "effect/Utils"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type { Endpoint } from "./Endpoint.js"
import { InvalidOptions } from "./EtcdError.js"
import { Answered } from "./internal/answered.js"
import { timeoutFailIn } from "./internal/timeout.js"
import { decodeDuration, withinTimerLimit } from "./internal/timerLimit.js"
import { inNextTurn } from "./internal/nextTurn.js"

/**
 * What an error says, for a message: its message, or when it has none (a
 * `Data.TaggedError` without one has an empty message) its `_tag`, or else its
 * String form.
 */
const reasonOf = (error: unknown): string => {
  if (typeof error === "object" && error !== null) {
    const message = "message" in error && error.message !== undefined ? String(error.message) : ""
    if (message !== "") return message
    if ("_tag" in error && typeof error._tag === "string" && error._tag !== "") return error._tag
  }
  return String(error)
}

/**
 * A retried call failed: the callback (or `max`) said stop, or the timeout
 * passed. `attempts` is how many attempts were made, exactly (a balancer
 * failure such as `NoEndpoints` counts as an attempt), the one the timeout cut
 * off included: `inFlight` is true when the timeout interrupted an attempt
 * still running, which has no error. `errors` holds the error of every attempt
 * that failed, in order, as go-kit's `RetryError.RawErrors` does. Without a
 * `schedule`, attempts that fail at once (an endpoint refusing at once, a
 * breaker open) come tens of thousands per second, and each error is kept: a
 * retry that may spin for long wants a `schedule` (a balancer's `NoEndpoints`
 * is one value, shared, so spinning on an empty set keeps references only). `final` is the
 * error that ended the call: the last attempt's (or the callback's replacement
 * for it), or a `TimeoutException` when `timedOut` is true. Its message says
 * how the call ended, after how many attempts, and gives the final error's
 * message (its `_tag` when it has none): "timed out after 1 attempt (the last
 * one still running): retry timed out after 500ms".
 *
 * See {@link RetryErrorOf} for the same error with typed fields.
 *
 * @since 0.1.0
 * @category errors
 */
export class RetryError extends Schema.TaggedError<RetryError>()("RetryError", {
  errors: Schema.Array(Schema.Defect),
  final: Schema.Defect,
  timedOut: Schema.Boolean,
  attempts: Schema.Int,
  inFlight: Schema.optionalWith(Schema.Boolean, { default: () => false })
}) {
  /** @since 0.1.0 */
  override get message(): string {
    return `${this.timedOut ? "timed out" : "failed"} after ${this.attempts} attempt${this.attempts === 1 ? "" : "s"}${
      this.inFlight ? ` (the last one still running)` : ""
    }: ${reasonOf(this.final)}`
  }
}

/**
 * A {@link RetryError} whose attempt errors are `E` and whose final error is `F`.
 *
 * @since 0.1.0
 * @category errors
 */
export interface RetryErrorOf<E, F = E> extends RetryError {
  readonly errors: ReadonlyArray<E>
  readonly final: F
}

/**
 * What a {@link Callback} decides after a failed attempt: go on or stop, and
 * optionally an error to report instead of the one received (when stopping,
 * it becomes the `final` error).
 *
 * @since 0.1.0
 * @category models
 */
export interface Decision<E2 = never> {
  readonly keepTrying: boolean
  readonly replacement?: E2 | undefined
}

/**
 * go-kit's `lb.Callback`: called after every failed attempt with its number
 * (from 1) and its error.
 *
 * @since 0.1.0
 * @category models
 */
export type Callback<E, E2 = never> = (attempt: number, error: E) => Decision<E2>

/**
 * @since 0.1.0
 * @category models
 */
export interface Options<E, E2 = never> {
  /** How many attempts in all, at least 1. */
  readonly max: number
  /**
   * The deadline of the whole call, attempts and waits included, at most about
   * 24.8 days (a timer's limit). `Duration.infinity` for none.
   */
  readonly timeout: Duration.DurationInput
  /** Called after every failed attempt: may stop before `max` and replace the error. */
  readonly callback?: Callback<E, E2> | undefined
  /** How long to wait before each further attempt (fed with the attempt's error). No wait by default. */
  readonly schedule?: Schedule.Schedule<unknown, E> | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface CallbackOptions<E, E2 = never> {
  /**
   * The deadline of the whole call, attempts and waits included, at most about
   * 24.8 days (a timer's limit). `Duration.infinity` for none.
   */
  readonly timeout: Duration.DurationInput
  /** Called after every failed attempt: decides whether to go on, and may replace the error. */
  readonly callback: Callback<E, E2>
  /** How long to wait before each further attempt (fed with the attempt's error). No wait by default. */
  readonly schedule?: Schedule.Schedule<unknown, E> | undefined
}

/**
 * The failure of a retried call whose attempts fail with `E` and whose callback
 * replaces errors with `E2`.
 *
 * @since 0.1.0
 * @category errors
 */
export type Failure<E, E2 = never> = RetryErrorOf<E, E | E2 | Cause.TimeoutException>

/** What a failed attempt tells `Effect.retry`. */
interface Verdict<E> {
  readonly keepTrying: boolean
  readonly error: E
  readonly final: unknown
}

const decodeTimeout = (
  input: Duration.DurationInput
): Effect.Effect<Option.Option<Duration.Duration>, InvalidOptions> =>
  decodeDuration("timeout", input, { positive: true, infinite: "allow" }).pipe(
    // a timer never fires after a longer wait (Node.js fires it at once, Effect's clock never):
    // such a timeout would silently be none
    Effect.flatMap((decoded) => withinTimerLimit("timeout", input, decoded)),
    Effect.map((d) => (Duration.isFinite(d) ? Option.some(d) : Option.none()))
  )

/**
 * The synchronous pick of a balancer made by `Balancer.roundRobin` over our own
 * Subscriber (the key is the one `Balancer` defines): an `Exit` with the endpoint
 * or the pick's failure, without running an effect. `undefined` for any other
 * balancer, which is run as an effect.
 */
const pickExitOf = <Req, Res, E, BE>(
  balancer: Effect.Effect<Endpoint<Req, Res, E>, BE>
): (() => Exit.Exit<Endpoint<Req, Res, E>, BE>) | undefined => {
  const pick = (balancer as unknown as { readonly [key: symbol]: unknown })[
    Symbol.for("effect-sd-etcd/Balancer/pickExit")
  ]
  return typeof pick === "function" ? () => pick.call(balancer) as Exit.Exit<Endpoint<Req, Res, E>, BE> : undefined
}

/**
 * What a call has done so far: the attempts started (the first one included)
 * and failed, and every failed attempt's error; with the call's request and the
 * event loop's turn its first attempt started in. Made on the first failure, or
 * for a call with a timeout before it (the timeout reads it) once the first
 * attempt did not succeed at once.
 */
class Attempts<Req, E> {
  started = 1
  // made on the first failure: a call with a timeout whose first attempt suspends makes an
  // Attempts for its timeout to read, and most such calls succeed
  private failures: Array<E> | undefined = undefined

  constructor(
    readonly request: Req,
    /** `loopTurns.epoch` when the first attempt started. */
    readonly since: number
  ) {}

  get failed(): number {
    return this.failures === undefined ? 0 : this.failures.length
  }

  fail(error: E): number {
    return (this.failures ??= []).push(error)
  }

  errors(): Array<E> {
    return this.failures === undefined ? [] : this.failures.slice()
  }
}

/**
 * How many attempts in a row may run without the event loop having had a turn:
 * the next one waits for it. Attempts that fail at once (`NoEndpoints` while a
 * subscriber has no instance yet, an endpoint that refuses at once) and the
 * default policy, which does not wait, never reach a real async boundary: Effect's
 * scheduler hands timers and I/O a turn only after about 2048 × 2048 operations
 * (seconds), so the call's timeout fired seconds late, a subscriber's watch could
 * not bring in the instance that the call waited for, and an endless retry hung
 * the process. A wait for the next turn costs about as much as a few such attempts.
 */
const attemptsPerTurn = 16

/**
 * The event loop's turns, process-wide: how many attempts ran since its last
 * turn, over every retrying call, with one `setImmediate` armed at a time to
 * say when it had one. Before an attempt, when `attemptsPerTurn` ran without,
 * the attempt waits for the next turn, in order, `attemptsPerTurn` of them per
 * turn: N calls spinning at once (every request of a server whose upstream has
 * no instance yet) still let timers and I/O in every `attemptsPerTurn`
 * attempts, not every N × `attemptsPerTurn`. Attempts that do I/O or wait on
 * a timer (a backoff schedule) let the turn come meanwhile and never wait.
 * Only failed calls get here: successful ones never pay.
 */
const loopTurns = {
  armed: false,
  inARow: 0,
  epoch: 0,
  waiting: new Set<() => void>()
}

const onLoopTurn = (): void => {
  loopTurns.epoch++
  loopTurns.armed = false
  loopTurns.inARow = 0
  if (loopTurns.waiting.size === 0) return
  const next: Array<() => void> = []
  for (const resume of loopTurns.waiting) {
    next.push(resume)
    if (next.length === attemptsPerTurn) break
  }
  for (const resume of next) loopTurns.waiting.delete(resume)
  // the attempts resumed now are the first of the next turn
  loopTurns.inARow = next.length
  armLoopTurn()
  for (const resume of next) resume()
}

const armLoopTurn = (): void => {
  if (loopTurns.armed) return
  loopTurns.armed = true
  inNextTurn(onLoopTurn)
}

/** Before an attempt after a failure: whether it must wait for {@link nextLoopTurn}. */
const mustWaitForTurn = (since: number): boolean => {
  armLoopTurn()
  // the previous attempt of this call spanned a turn (I/O, a timer): it let the loop in, no wait
  if (since !== loopTurns.epoch) return false
  if (loopTurns.inARow < attemptsPerTurn && loopTurns.waiting.size === 0) {
    loopTurns.inARow++
    return false
  }
  return true
}

/** Waits for the event loop's next turn, behind the attempts already waiting (interrupted: leaves the line). */
const nextLoopTurn: Effect.Effect<void> = Effect.async<void>((resume) => {
  const resumeThis = () => resume(Effect.void)
  loopTurns.waiting.add(resumeThis)
  armLoopTurn()
  return Effect.sync(() => {
    loopTurns.waiting.delete(resumeThis)
  })
})

/** Whether `effect` is already over, with a success: an attempt or a call answered at once. */
const isDone = <A, E>(effect: Effect.Effect<A, E>): effect is Exit.Success<A, never> =>
  Exit.isExit(effect) && effect._tag === "Success"

/** What a timed call reads of the fiber running it, where Effect 3's `FiberRuntime` keeps it. */
interface Running extends Fiber.RuntimeFiber<unknown, unknown> {
  readonly currentRuntimeFlags: RuntimeFlags.RuntimeFlags
  currentOpCount: number
  readonly _queue: { readonly length: number }
}

/** The fiber running the code that calls this, when it is one that keeps what {@link Running} reads. */
const runningFiber = (): Running | undefined => {
  const current = Fiber.getCurrentFiber()
  if (current._tag === "None") return undefined
  const fiber = current.value as unknown as Partial<Running>
  return typeof fiber.currentRuntimeFlags === "number" &&
    typeof fiber.currentOpCount === "number" &&
    typeof fiber._queue === "object" &&
    fiber._queue !== null
    ? (fiber as Running)
    : undefined
}

/**
 * Counts `steps` of the run loop that `fiber` went on without (an answer handed
 * back to its generator at once), as the run loop counts its own, and answers
 * whether its scheduler says it must yield now: then the answer goes through
 * the run loop, which yields.
 */
const stepsTaken = (fiber: Running, steps: number): boolean => {
  fiber.currentOpCount += steps
  return fiber.currentScheduler.shouldYield(fiber) !== false
}

const make = <Req, Res, E, BE, E2>(
  balancer: Effect.Effect<Endpoint<Req, Res, E>, BE>,
  timeout: Option.Option<Duration.Duration>,
  callback: Callback<E | BE, E2>,
  schedule: Schedule.Schedule<unknown, E | BE> | undefined
): Endpoint<Req, Res, Failure<E | BE, E2>> => {
  const policy: Schedule.Schedule<unknown, Verdict<E | BE>> = schedule === undefined
    ? Schedule.recurWhile((verdict: Verdict<E | BE>) => verdict.keepTrying)
    : Schedule.whileInput(
        Schedule.mapInput(schedule, (verdict: Verdict<E | BE>) => verdict.error),
        (verdict: Verdict<E | BE>) => verdict.keepTrying
      )
  // the fields are typed by construction: `errors` holds attempt errors, `final` one of
  // them, a callback replacement or a TimeoutException
  const failure = (attempts: Attempts<Req, E | BE>, final: unknown, timedOut: boolean) =>
    new RetryError(
      {
        errors: attempts.errors(),
        final,
        timedOut,
        attempts: attempts.started,
        inFlight: attempts.started > attempts.failed
      },
      // typed by construction; validating checks every error (183 ms for a million: late timeouts)
      true
    ) as Failure<E | BE, E2>

  // After the first attempt failed, `Effect.retry` drives the next ones. Its first run
  // replays that failure, so the schedule (if any) waits before the second attempt as
  // before every later one. Only failed calls get here: the successful ones stay cheap.
  const retrying = (
    request: Req,
    attempts: Attempts<Req, E | BE>,
    firstError: E | BE,
    firstSince: number
  ): Effect.Effect<Res, Failure<E | BE, E2>> => {
    const judge = (error: E | BE): Verdict<E | BE> => {
      const decision = callback(attempts.fail(error), error)
      return {
        keepTrying: decision.keepTrying,
        error,
        final: decision.replacement === undefined ? error : decision.replacement
      }
    }
    const stop = (verdict: Verdict<E | BE>) => Effect.fail(failure(attempts, verdict.final, false))
    const first = judge(firstError)
    if (!first.keepTrying) return stop(first)
    const attempt = Effect.mapError(
      Effect.suspend(() => {
        attempts.started++
        return Effect.flatMap(balancer, (endpoint) => endpoint(request))
      }),
      judge
    )
    let since = firstSince
    const stamped = Effect.suspend(() => {
      since = loopTurns.epoch
      return attempt
    })
    const afterTurn = Effect.zipRight(nextLoopTurn, stamped)
    let replayed = false
    const next = Effect.suspend(() => {
      if (replayed) return mustWaitForTurn(since) ? afterTurn : stamped
      replayed = true
      return Effect.fail(first)
    })
    return Effect.catchAll(Effect.retry(next, policy), stop)
  }

  // The first attempt. With a balancer that picks synchronously, the endpoint is picked here
  // and its effect returned; when that effect is already complete (an endpoint answering with
  // `Effect.succeed`, a cached answer) and a success, the call is over: nothing ran that a
  // timeout could stop, so no timer and no fiber are needed. Anything else is the first
  // attempt to run (and time).
  const pickExit = pickExitOf(balancer)
  const firstAttempt =
    pickExit === undefined
      ? (request: Req): Effect.Effect<Res, E | BE> => Effect.flatMap(balancer, (endpoint) => endpoint(request))
      : (request: Req): Effect.Effect<Res, E | BE> => {
          const picked = pickExit()
          return picked._tag === "Success" ? picked.value(request) : Exit.failCause(picked.cause)
        }

  // Without a timeout, after a failed first attempt, `retrying` goes on (in the caller's
  // fiber; with a timeout, see `retryAfter`). `catchAllCause` puts a frame that a
  // success skips (`catchAll` would add a turn and an allocation to every successful call);
  // only a failure pays for handing its cause to `catchAll`, which keeps its semantics
  // exactly (defects and interruptions are not retried).
  const orRetry = (attempt: Effect.Effect<Res, E | BE>, request: Req): Effect.Effect<Res, Failure<E | BE, E2>> => {
    armLoopTurn()
    const since = loopTurns.epoch
    return Effect.catchAllCause(attempt, (cause) =>
      Effect.catchAll(Effect.failCause(cause), (error) => retrying(request, new Attempts(request, since), error, since))
    )
  }

  // the hot path allocates no named closures: they cost a lot under keep-names transpilers
  if (Option.isNone(timeout)) {
    return (request) =>
      Effect.suspend(() => {
        const attempt = firstAttempt(request)
        return isDone(attempt) ? attempt : orRetry(attempt, request)
      })
  }
  const duration = timeout.value
  const timeoutMessage = `retry timed out after ${Duration.format(duration)}`
  const timedOut = (attempts: Attempts<Req, E | BE>) =>
    failure(attempts, new Cause.TimeoutException(timeoutMessage), true)
  // With a timeout, the first attempt runs in the timeout's child fiber by itself, without the
  // frame that `orRetry` puts around it: that frame, one more step of Effect's run loop in the
  // child, was a fifth of a retried call's overhead. A first attempt that fails goes on, under
  // the same deadline, in a further child that runs `retryAfter`: what `orRetry` runs after a
  // failure, for the cause the attempt failed with.
  const retryAfter = (cause: Cause.Cause<E | BE>, attempts: Attempts<Req, E | BE>) =>
    Effect.catchAll(Effect.failCause(cause), (error) => retrying(attempts.request, attempts, error, attempts.since))
  const run = (
    parent: Fiber.RuntimeFiber<unknown, unknown>,
    flags: RuntimeFlags.RuntimeFlags,
    request: Req
  ): Effect.Effect<Res, Failure<E | BE, E2>> => {
    const attempt = firstAttempt(request)
    if (isDone(attempt)) return attempt
    armLoopTurn()
    const attempts = new Attempts<Req, E | BE>(request, loopTurns.epoch)
    return timeoutFailIn(parent, flags, attempt, duration, timedOut, attempts, retryAfter)
  }
  // A timed call is an effect of its own, as the round robin is. Run as an effect (`flatMap`,
  // `Effect.exit`, ...), it is one step of the run loop, `Commit`, whose `commit()` starts the call
  // in the fiber running it, as `Effect.withFiberRuntime` did in its one step. Yielded in
  // `Effect.gen`, its iterator starts the call when the generator reaches it (when the fiber would
  // run it), and a call answered at once (an endpoint that answers without suspending, through its
  // attempt's fiber or without one) hands its answer back without suspending the generator, where
  // it took two steps of the run loop (the call's and its answer's) and the generator's suspension.
  // Those two steps are still counted on the fiber (`stepsTaken`): when its scheduler says it is
  // time to yield to other fibers, the answer goes through the run loop, which yields there and
  // takes the interruptions that came meanwhile, so that a loop of such calls still gives other
  // fibers their turns and can be interrupted. A fiber with messages waiting (its interruption,
  // sent by the code it runs) runs the call as a step of the run loop, which takes them first. An
  // endpoint that throws is a defect, as in the run loop. The fiber is Effect's current one
  // (`Fiber.getCurrentFiber`); its runtime flags, its op count and its messages are those Effect 3's
  // `FiberRuntime` keeps in `currentRuntimeFlags`, `currentOpCount` and `_queue` (a fiber without
  // them runs every call through the run loop, in `Effect.withFiberRuntime`).
  class TimedCall extends Effectable.Class<Res, Failure<E | BE, E2>> {
    constructor(readonly request: Req) {
      super()
    }

    commit(): Effect.Effect<Res, Failure<E | BE, E2>> {
      const fiber = runningFiber()
      if (fiber !== undefined) return run(fiber, fiber.currentRuntimeFlags, this.request)
      return Effect.withFiberRuntime((parent, status) => run(parent, status.runtimeFlags, this.request))
    }

    override [Symbol.iterator](): Effect.EffectGenerator<Effect.Effect<Res, Failure<E | BE, E2>>> {
      const fiber = runningFiber()
      if (fiber === undefined || fiber._queue.length > 0) return new SingleShotGen(new YieldWrap(this))
      let call: Effect.Effect<Res, Failure<E | BE, E2>>
      try {
        call = run(fiber, fiber.currentRuntimeFlags, this.request)
      } catch (defect) {
        return new SingleShotGen(new YieldWrap(Exit.die(defect)))
      }
      if (!isDone(call)) return new SingleShotGen(new YieldWrap(call))
      if (!stepsTaken(fiber, 2)) return new Answered(call.value)
      const answer = call.value
      return new SingleShotGen(new YieldWrap(Effect.sync(() => answer)))
    }
  }
  return (request) => new TimedCall(request)
}

/**
 * go-kit's `lb.Retry(max, timeout, balancer)`: calls an endpoint from the
 * balancer, and on failure a fresh one, up to `max` attempts in all, within
 * `timeout` for the whole call. The optional `callback` may stop earlier and
 * replace the error; the optional `schedule` waits between attempts.
 *
 * Failures are a {@link RetryError} that counts the attempts and holds every
 * failed attempt's error and the final one,
 * after a timeout too (go-kit drops them). Defects and interruptions are not
 * retried. When the timeout fires, or the caller is interrupted, the attempt in
 * flight is interrupted, and the call ends once its finalizers have run (as
 * with `Effect.timeout`). Fails with `InvalidOptions` when `max` is not a
 * positive integer or `timeout` is not a positive duration of at most about
 * 24.8 days (a timer's limit; `Duration.infinity` for none).
 *
 * As in go-kit, attempts follow each other without a wait unless a `schedule`
 * says otherwise. Attempts that fail at once (`NoEndpoints` while a subscriber
 * has no instance yet, an endpoint that refuses at once) give the event loop a
 * turn every 16 attempts, so that timers, I/O (the subscriber's watch, which
 * may bring the instance the call waits for), other fibers and the timeout
 * itself run meanwhile.
 *
 * @since 0.1.0
 * @category constructors
 */
export const retry: <Req, Res, E, BE, E2 = never>(
  balancer: Effect.Effect<Endpoint<Req, Res, E>, BE>,
  options: Options<E | BE, E2>
) => Effect.Effect<Endpoint<Req, Res, Failure<E | BE, E2>>, InvalidOptions> = Effect.fn("Retry.retry")(function* <
  Req,
  Res,
  E,
  BE,
  E2 = never
>(balancer: Effect.Effect<Endpoint<Req, Res, E>, BE>, options: Options<E | BE, E2>) {
  const max = options.max
  if (!Number.isSafeInteger(max) || max < 1) {
    return yield* new InvalidOptions({ option: "max", reason: `must be a positive integer, got ${String(max)}` })
  }
  const timeout = yield* decodeTimeout(options.timeout)
  const user = options.callback
  const callback: Callback<E | BE, E2> = (attempt, error) => {
    if (user === undefined) return { keepTrying: attempt < max }
    const decision = user(attempt, error)
    return attempt < max ? decision : { keepTrying: false, replacement: decision.replacement }
  }
  return make(balancer, timeout, callback, options.schedule)
})

/**
 * go-kit's `lb.RetryWithCallback(timeout, balancer, callback)`: like
 * {@link retry}, but the callback alone decides when to stop.
 *
 * @since 0.1.0
 * @category constructors
 */
export const retryWithCallback: <Req, Res, E, BE, E2 = never>(
  balancer: Effect.Effect<Endpoint<Req, Res, E>, BE>,
  options: CallbackOptions<E | BE, E2>
) => Effect.Effect<Endpoint<Req, Res, Failure<E | BE, E2>>, InvalidOptions> = Effect.fn("Retry.retryWithCallback")(
  function* <Req, Res, E, BE, E2 = never>(
    balancer: Effect.Effect<Endpoint<Req, Res, E>, BE>,
    options: CallbackOptions<E | BE, E2>
  ) {
    const timeout = yield* decodeTimeout(options.timeout)
    return make(balancer, timeout, options.callback, options.schedule)
  }
)
