/**
 * The longest delay a timer takes, and the check that holds a duration option
 * to it.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { InvalidOptions } from "../EtcdError.js"

/**
 * The longest delay a timer takes: 2^31 - 1 ms (about 24.8 days). A longer
 * Node.js timer fires at once, and Effect's clock never fires a longer sleep.
 */
export const maxTimerMillis = 2 ** 31 - 1

/** {@link maxTimerMillis} as a Duration. */
export const maxTimer: Duration.Duration = Duration.millis(maxTimerMillis)

/**
 * The input as the user gave it, for error messages: a Duration decodes negative
 * and NaN inputs to zero, so the decoded value would hide them.
 */
export const given = (input: Duration.DurationInput): string =>
  Duration.isDuration(input)
    ? Duration.format(input)
    : Array.isArray(input)
      ? `[${input.map(String).join(", ")}]`
      : typeof input === "bigint"
        ? `${input} nanos`
        : String(input)

/** Whether a duration input is NaN, or a `[seconds, nanos]` pair with one: `Duration` decodes them to zero. */
export const isNaNInput = (input: Duration.DurationInput): boolean =>
  (typeof input === "number" && Number.isNaN(input)) ||
  (Array.isArray(input) &&
    (input.some((part: unknown) => typeof part === "number" && Number.isNaN(part)) ||
      // [Infinity, -Infinity]: no value at all
      (input.length === 2 &&
        typeof input[0] === "number" &&
        typeof input[1] === "number" &&
        Number.isNaN(input[0] * 1e9 + input[1]))))

/**
 * Fails with `InvalidOptions` when `duration` (decoded from `input`) is finite
 * and longer than a timer can wait; an infinite duration passes, for the
 * options that take it to mean "never".
 */
export const withinTimerLimit = (
  option: string,
  input: Duration.DurationInput,
  duration: Duration.Duration
): Effect.Effect<Duration.Duration, InvalidOptions> =>
  Duration.isFinite(duration) && Duration.toMillis(duration) > maxTimerMillis
    ? Effect.fail(
        new InvalidOptions({
          option,
          reason: `must be at most ${Duration.format(maxTimer)} (a timer's limit), got ${given(input)}`
        })
      )
    : Effect.succeed(duration)

/**
 * Whether a duration input is negative as given (`Duration` decodes -5,
 * "-5 seconds", [-5, 0] to zero): a pair by its total (`[1, -1]` is 999,999,999
 * ns), a string by what follows its minus sign ("-0 seconds" is zero).
 */
const isNegativeInput = (input: Duration.DurationInput): boolean => {
  if (typeof input === "number" || typeof input === "bigint") return input < 0
  if (typeof input === "string") {
    const text = input.trim()
    if (!text.startsWith("-")) return false
    const magnitude = Duration.decodeUnknown(text.slice(1))
    return Option.isNone(magnitude) || Duration.toMillis(magnitude.value) > 0
  }
  if (Array.isArray(input) && input.length === 2) {
    const [seconds, nanos] = input as ReadonlyArray<unknown>
    if (typeof seconds === "number" && typeof nanos === "number") return seconds * 1e9 + nanos < 0
  }
  return false
}

/**
 * Decodes a duration option, with the same messages for the same input in
 * every option: "not a duration: NaN", "must be positive, got -5" (or "must
 * not be negative, got -5" where zero is allowed), "must be finite, got
 * Infinity" where an infinite duration is not allowed (`infinite: "reject"`;
 * with `"allow"` it passes, for the options that take it to mean "never").
 * The timer's limit is checked apart ({@link withinTimerLimit}): not every
 * duration is a timer's.
 */
export const decodeDuration = (
  option: string,
  input: Duration.DurationInput,
  rules: { readonly positive: boolean; readonly infinite: "reject" | "allow" }
): Effect.Effect<Duration.Duration, InvalidOptions> =>
  Effect.suspend(() => {
    const decoded = Duration.decodeUnknown(input)
    if (Option.isNone(decoded) || isNaNInput(input)) {
      return Effect.fail(new InvalidOptions({ option, reason: `not a duration: ${given(input)}` }))
    }
    const millis = Duration.toMillis(decoded.value)
    if (isNegativeInput(input) || (rules.positive ? !(millis > 0) : millis < 0)) {
      const rule = rules.positive ? "must be positive" : "must not be negative"
      return Effect.fail(new InvalidOptions({ option, reason: `${rule}, got ${given(input)}` }))
    }
    if (rules.infinite === "reject" && !Duration.isFinite(decoded.value)) {
      return Effect.fail(new InvalidOptions({ option, reason: `must be finite, got ${given(input)}` }))
    }
    return Effect.succeed(decoded.value)
  })
