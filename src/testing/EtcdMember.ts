/**
 * One spawned etcd process (the single server, or a member of a cluster) and
 * what tests do to it: stop, start again on the same data dir and ports, kill,
 * pause and resume.
 *
 * @since 0.1.0
 */
import type * as Effect from "effect/Effect"
import type * as Option from "effect/Option"
import type { EtcdTestError } from "./EtcdTestError.js"

/**
 * `Running`: the process is alive; `Paused`: alive but stopped with SIGSTOP;
 * `Stopped`: no process.
 *
 * @since 0.1.0
 * @category models
 */
export type State = "Running" | "Paused" | "Stopped"

/**
 * What a member says about itself (its Maintenance status).
 *
 * @since 0.1.0
 * @category models
 */
export interface Status {
  /** This member's id (decimal). */
  readonly memberId: string
  /** The id of the leader this member follows (decimal), `"0"` when it knows none. */
  readonly leaderId: string
  readonly isLeader: boolean
  /** The store revision of this member. */
  readonly revision: number
  readonly raftTerm: number
}

/**
 * A spawned etcd process bound to 127.0.0.1. Its ports and data dir stay the
 * same across `stop` / `start`; every operation is serialized per member.
 *
 * @since 0.1.0
 * @category models
 */
export interface EtcdMember {
  /** The member name (`--name`). */
  readonly name: string
  /** The client URL (`http://127.0.0.1:<port>`, `https://` in TLS mode). */
  readonly clientUrl: string
  /** The peer URL (always plain http on 127.0.0.1). */
  readonly peerUrl: string
  /** The data dir (`--data-dir`), kept across restarts. */
  readonly dataDir: string
  /** Where etcd writes its log (zap, JSON lines). */
  readonly logFile: string
  /** The pid of the current process, if any. Changes on every start. */
  readonly pid: Effect.Effect<Option.Option<number>>
  /** Whether the process is running, paused or stopped. */
  readonly state: Effect.Effect<State>
  /** One `GET /health` probe: true when the member answers healthy within a second. */
  readonly isHealthy: Effect.Effect<boolean>
  /**
   * The member's Maintenance status through etcd's JSON gateway (fails when it
   * does not answer within a second). etcd 3.4 refuses it once auth is enabled
   * in TLS mode; `EtcdCluster.leader` does not depend on it.
   */
  readonly status: Effect.Effect<Status, EtcdTestError>
  /**
   * Starts the process again, same data dir and ports, and waits until it is
   * healthy (for a cluster member: until it has rejoined a quorum). Does nothing
   * when it is running; resumes it when it is paused, and waits until it is
   * healthy. A start that fails or is interrupted kills the process.
   */
  readonly start: Effect.Effect<void, EtcdTestError>
  /**
   * SIGTERM (after SIGCONT when paused), SIGKILL after the grace period; waits
   * for the exit. A cluster leader first hands its leadership over, which takes
   * longer than the grace period when its best-connected peer is paused: use
   * `kill` there.
   */
  readonly stop: Effect.Effect<void>
  /** SIGKILL; waits for the exit. */
  readonly kill: Effect.Effect<void>
  /** `stop`, then `start`. */
  readonly restart: Effect.Effect<void, EtcdTestError>
  /** SIGSTOP: the process stays alive but stops answering. */
  readonly pause: Effect.Effect<void>
  /** SIGCONT after `pause`. */
  readonly resume: Effect.Effect<void>
}
