/**
 * The typed errors of effect-sd-etcd.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"

/**
 * go-kit's `ErrNoKey`: an operation needs a key but got an empty one.
 *
 * @since 0.1.0
 * @category errors
 */
export class NoKey extends Schema.TaggedError<NoKey>()("NoKey", {}) {
  /** @since 0.1.0 */
  override get message(): string {
    return "no key provided"
  }
}

/**
 * go-kit's `ErrNoValue`: an operation needs a value but got an empty one.
 *
 * @since 0.1.0
 * @category errors
 */
export class NoValue extends Schema.TaggedError<NoValue>()("NoValue", {}) {
  /** @since 0.1.0 */
  override get message(): string {
    return "no value provided"
  }
}

/**
 * Options that can never work: an endpoint without scheme or port, an
 * unreadable TLS file, a non-positive duration or one over its limit, a heartbeat
 * under 500 ms, a TTL of two heartbeats or less, ... Raised before anything is
 * sent to etcd.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidOptions extends Schema.TaggedError<InvalidOptions>()("InvalidOptions", {
  /** The option at fault, e.g. `endpoints`, `ttl`, `cert`. */
  option: Schema.String,
  /** What is wrong with it. */
  reason: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {
  /** @since 0.1.0 */
  override get message(): string {
    return `invalid option ${this.option}: ${this.reason}`
  }
}

/**
 * Why an etcd operation failed.
 *
 * - `Unavailable`: no member answered (connection refused, cluster down, no leader).
 * - `Timeout`: the request did not finish within its deadline.
 * - `LeaseNotFound`: the lease expired or was revoked.
 * - `Compacted`: a watch asked for a revision that etcd has compacted away.
 * - `Rewound`: the cluster's revision is behind one already seen (a wiped or replaced cluster).
 * - `PermissionDenied`: the authenticated user may not do this.
 * - `AuthFailed`: the credentials (user / password / certificate) were refused.
 * - `TooLarge`: the request exceeds etcd's request size limit.
 * - `Canceled`: etcd canceled a watch for another reason.
 * - `Other`: anything else; see `cause`.
 *
 * @since 0.1.0
 * @category errors
 */
export const EtcdErrorReason = Schema.Literal(
  "Unavailable",
  "Timeout",
  "LeaseNotFound",
  "Compacted",
  "Rewound",
  "PermissionDenied",
  "AuthFailed",
  "TooLarge",
  "Canceled",
  "Other"
)

/**
 * @since 0.1.0
 * @category errors
 */
export type EtcdErrorReason = typeof EtcdErrorReason.Type

/**
 * An etcd operation failed. Says which operation (`put`, `grant`, `watch`, ...)
 * and why, and keeps the underlying cause.
 *
 * @since 0.1.0
 * @category errors
 */
export class EtcdError extends Schema.TaggedError<EtcdError>()("EtcdError", {
  operation: Schema.String,
  reason: EtcdErrorReason,
  detail: Schema.optional(Schema.String),
  cause: Schema.optional(Schema.Defect)
}) {
  /** @since 0.1.0 */
  override get message(): string {
    return `etcd ${this.operation} failed (${this.reason})${this.detail === undefined ? "" : `: ${this.detail}`}`
  }
}
