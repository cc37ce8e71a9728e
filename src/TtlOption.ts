/**
 * How often a registration heartbeats and how long its lease lives without one
 * (go-kit's `TTLOption`, made strict).
 *
 * @since 0.1.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import { InvalidOptions } from "./EtcdError.js"
import { decodeDuration, given, maxTimer, withinTimerLimit } from "./internal/timerLimit.js"

/**
 * A validated TTL option. Build it with {@link make}; `ttlSeconds` is the
 * lease TTL sent to etcd, the TTL rounded up to whole seconds.
 *
 * @since 0.1.0
 * @category models
 */
export interface TtlOption {
  readonly _tag: "TtlOption"
  readonly heartbeat: Duration.Duration
  readonly ttl: Duration.Duration
  readonly ttlSeconds: number
}

/**
 * The smallest heartbeat interval accepted: 500 ms (as go-kit).
 *
 * @since 0.1.0
 * @category constants
 */
export const minHeartbeat: Duration.Duration = Duration.millis(500)

/**
 * The TTL must be more than this many heartbeats, so that one lost heartbeat
 * never lets the lease expire: after a lost one, the next renews the lease a
 * heartbeat before it would run out (at exactly two heartbeats, the renewal
 * and the expiry fall due at the same moment).
 *
 * @since 0.1.0
 * @category constants
 */
export const minHeartbeatsPerTtl = 2

/**
 * The largest heartbeat interval accepted: 2^31 - 1 ms (about 24.8 days), the
 * longest delay a Node.js timer takes (a longer heartbeat would never fire). The
 * same limit as every duration of `EtcdClientOptions`.
 *
 * @since 0.1.0
 * @category constants
 */
export const maxHeartbeat: Duration.Duration = maxTimer

/**
 * The largest TTL accepted: 9,000,000,000 s, etcd's largest lease TTL
 * (`MaxLeaseTTL`); etcd refuses a longer lease ("too large lease TTL").
 *
 * @since 0.1.0
 * @category constants
 */
export const maxTtl: Duration.Duration = Duration.seconds(9_000_000_000)

/**
 * Defaults: 3 s heartbeat, 10 s TTL.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaults = { heartbeat: Duration.seconds(3), ttl: Duration.seconds(10) } as const

const decode = (option: string, input: Duration.DurationInput): Effect.Effect<Duration.Duration, InvalidOptions> =>
  decodeDuration(option, input, { positive: true, infinite: "reject" })

/**
 * Validates a TTL option. Rules: the heartbeat is at least 500 ms
 * ({@link minHeartbeat}) and at most about 24.8 days ({@link maxHeartbeat}, a
 * timer's limit); the TTL is more than two heartbeats
 * ({@link minHeartbeatsPerTtl}) and at most 9,000,000,000 s ({@link maxTtl},
 * etcd's limit). Invalid values fail with `InvalidOptions`, which names the
 * option and the rule; nothing is clamped. A missing (`undefined`) option
 * takes its default; `null` is not a duration and fails. The TTL given to etcd
 * is rounded up to whole seconds, never down.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options?: {
  readonly heartbeat?: Duration.DurationInput | undefined
  readonly ttl?: Duration.DurationInput | undefined
}): Effect.Effect<TtlOption, InvalidOptions> =>
  Effect.gen(function* () {
    // only a missing option takes the default: `null` (a config value that was not found, a
    // caller without types) is not a duration, and fails like every other non-duration
    if (options === null) {
      return yield* new InvalidOptions({ option: "ttl option", reason: "must be an object or undefined, got null" })
    }
    const heartbeatInput = options?.heartbeat === undefined ? defaults.heartbeat : options.heartbeat
    const ttlInput = options?.ttl === undefined ? defaults.ttl : options.ttl
    const heartbeat = yield* decode("heartbeat", heartbeatInput)
    const ttl = yield* decode("ttl", ttlInput)
    if (Duration.lessThan(heartbeat, minHeartbeat)) {
      return yield* new InvalidOptions({
        option: "heartbeat",
        reason: `must be at least ${Duration.format(minHeartbeat)}, got ${given(heartbeatInput)}`
      })
    }
    yield* withinTimerLimit("heartbeat", heartbeatInput, heartbeat)
    if (Duration.greaterThan(ttl, maxTtl)) {
      return yield* new InvalidOptions({
        option: "ttl",
        reason: `must be at most ${Duration.toSeconds(maxTtl)} seconds (etcd's largest lease TTL), got ${given(ttlInput)}`
      })
    }
    if (Duration.toMillis(ttl) <= minHeartbeatsPerTtl * Duration.toMillis(heartbeat)) {
      return yield* new InvalidOptions({
        option: "ttl",
        reason: `must be more than ${minHeartbeatsPerTtl} heartbeats (${Duration.format(
          Duration.times(heartbeat, minHeartbeatsPerTtl)
        )}), got ${given(ttlInput)}`
      })
    }
    const option: TtlOption = Object.freeze({
      _tag: "TtlOption",
      heartbeat,
      ttl,
      ttlSeconds: Math.ceil(Duration.toMillis(ttl) / 1000)
    })
    validated.add(option)
    return option
  })

/** The options `make` returned: frozen, so they are still valid (the Registrar checks any other again). */
const validated = new WeakSet<TtlOption>()

/**
 * Whether `option` is one that {@link make} returned, and so is valid as it is.
 * A `TtlOption` is a plain record that can be built by hand: the Registrar
 * checks such a one again with {@link make} (and fails with `InvalidOptions`
 * when it breaks a rule), and takes one that `make` returned as it is.
 *
 * @since 0.1.0
 * @category guards
 */
export const isValidated = (option: TtlOption): boolean => validated.has(option)
