/**
 * The typed errors of the etcd test kit.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"

/**
 * No etcd binary could be found: neither the `binary` option, nor `ETCD_BIN`,
 * nor an `etcd` on `PATH` names an executable file.
 *
 * @since 0.1.0
 * @category errors
 */
export class EtcdBinaryNotFound extends Schema.TaggedError<EtcdBinaryNotFound>()("EtcdBinaryNotFound", {
  /** What was looked for: a path, or `etcd` on `PATH`. */
  binary: Schema.String,
  /** Where the name came from. */
  source: Schema.Literal("option", "ETCD_BIN", "PATH")
}) {
  /** @since 0.1.0 */
  override get message(): string {
    const what =
      this.source === "PATH"
        ? "no `etcd` executable on PATH"
        : `${this.source === "ETCD_BIN" ? "ETCD_BIN" : "the binary option"} names ${this.binary}, which is not an executable file`
    return `etcd binary not found: ${what}. Install Debian's etcd-server package (apt-get install etcd-server) or set ETCD_BIN to the path of an etcd binary.`
  }
}

/**
 * Why a test-kit operation failed.
 *
 * - `Timeout`: it did not finish in time (a member never became healthy, no leader was elected, ...).
 * - `Exited`: an etcd process exited while it was expected to come up.
 * - `PortInUse`: an etcd process could not bind its ports.
 * - `Failed`: anything else (a file system error, openssl failing, etcd refusing an auth request, ...).
 *
 * @since 0.1.0
 * @category errors
 */
export const EtcdTestErrorReason = Schema.Literal("Timeout", "Exited", "PortInUse", "Failed")

/**
 * @since 0.1.0
 * @category errors
 */
export type EtcdTestErrorReason = typeof EtcdTestErrorReason.Type

/**
 * A test-kit operation failed: says which (`start`, `tls`, `auth`, `leader`, ...), why, and
 * what etcd logged last when it is about a process.
 *
 * @since 0.1.0
 * @category errors
 */
export class EtcdTestError extends Schema.TaggedError<EtcdTestError>()("EtcdTestError", {
  operation: Schema.String,
  reason: EtcdTestErrorReason,
  detail: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {
  /** @since 0.1.0 */
  override get message(): string {
    return `etcd test kit: ${this.operation} failed (${this.reason}): ${this.detail}`
  }
}
