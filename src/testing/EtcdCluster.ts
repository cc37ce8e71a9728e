/**
 * A real etcd cluster on loopback for failover tests: three members (by
 * default) on free 127.0.0.1 ports, each with its own data dir in one temp dir;
 * members can be killed, stopped, restarted, paused and resumed, the leader
 * found, and the whole cluster wiped.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as EtcdClient from "../EtcdClient.js"
import type { EtcdError, InvalidOptions } from "../EtcdError.js"
import type { EtcdMember } from "./EtcdMember.js"
import type { EtcdServerOptions } from "./EtcdServer.js"
import type { EtcdBinaryNotFound } from "./EtcdTestError.js"
import { EtcdTestError } from "./EtcdTestError.js"
import type { TlsFiles } from "./EtcdTls.js"
import * as Group from "./internal/group.js"
import * as Member from "./internal/member.js"
import * as Os from "./internal/os.js"

/**
 * How to spawn the cluster: the single server's options, plus its size.
 *
 * @since 0.1.0
 * @category models
 */
export interface EtcdClusterOptions extends EtcdServerOptions {
  /** How many members. Default 3. */
  readonly size?: number | undefined
  /** How long `leader` waits for a leader that every answering member agrees on. Default 15 s. */
  readonly leaderTimeout?: Duration.DurationInput | undefined
}

/**
 * The running cluster.
 *
 * @since 0.1.0
 * @category models
 */
export interface EtcdCluster {
  /** The members, `etcd-0`, `etcd-1`, ...; each can be stopped, killed, restarted, paused, resumed. */
  readonly members: ReadonlyArray<EtcdMember>
  /** Every member's client URL. */
  readonly clientUrls: ReadonlyArray<string>
  /** The temp dir that holds the data dirs, the logs and the TLS files; removed at the end. */
  readonly directory: string
  /** The client's TLS files in TLS mode. */
  readonly tls: TlsFiles | undefined
  /** Options for `EtcdClient.make` / `EtcdClient.layer`: every endpoint, and the TLS files in TLS mode. */
  readonly clientOptions: EtcdClient.EtcdClientOptions
  /**
   * The leader: waits (up to `leaderTimeout`) until exactly one running,
   * unpaused member says it leads and every other one that answers knows a leader.
   */
  readonly leader: Effect.Effect<EtcdMember, EtcdTestError>
  /** The running members other than the {@link EtcdCluster.leader}. */
  readonly followers: Effect.Effect<ReadonlyArray<EtcdMember>, EtcdTestError>
  /** Starts every stopped member together (a lone member cannot win a quorum) and waits until all are healthy. */
  readonly start: Effect.Effect<void, EtcdTestError>
  /**
   * Resumes paused members, stops the followers, then the leader (a leader that
   * stops first waits for a peer to take over; stopping it last skips that).
   */
  readonly stop: Effect.Effect<void>
  /**
   * Kills every member, deletes the data dirs and starts them again on the same
   * ports with a new cluster token: an empty store, revision back to 1.
   */
  readonly wipe: Effect.Effect<void, EtcdTestError>
}

/**
 * @since 0.1.0
 * @category tags
 */
export const EtcdCluster: Context.Tag<EtcdCluster, EtcdCluster> = Context.GenericTag<EtcdCluster>(
  "effect-sd-etcd/testing/EtcdCluster"
)

const leaderPoll = Schedule.spaced("100 millis")

/**
 * Spawns the cluster and waits until every member is healthy. Closing the
 * scope resumes paused members, stops every member by its pid (SIGTERM, SIGKILL
 * after `stopTimeout`), waits for the exits and removes the temp dir; so does a
 * failed or interrupted start.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (
  options?: EtcdClusterOptions
) => Effect.Effect<EtcdCluster, EtcdBinaryNotFound | EtcdTestError, Scope.Scope> = Effect.fn("EtcdCluster.make")(
  function* (options: EtcdClusterOptions = {}) {
    const size = options.size ?? 3
    if (!Number.isInteger(size) || size < 1) {
      return yield* Group.invalidOption(`size must be a positive integer, got ${size}`)
    }
    const leaderTimeout = Duration.decode(options.leaderTimeout ?? "15 seconds")
    const names = Array.from({ length: size }, (_, i) => `etcd-${i}`)
    const group = yield* Group.make(names, options)
    const members = group.members.map((member) => ({ handle: member, member: Member.toPublic(member) }))

    const findLeader = (seen: { last: string }): Effect.Effect<Option.Option<EtcdMember>> =>
      Effect.gen(function* () {
        const answers = yield* Effect.forEach(
          members,
          ({ handle, member }) =>
            Effect.flatMap(handle.state, (state) =>
              state === "Running"
                ? Effect.map(
                    Effect.option(handle.role),
                    Option.map((role) => ({ member, role }))
                  )
                : Effect.succeedNone
            ),
          { concurrency: "unbounded" }
        ).pipe(Effect.map((all) => all.flatMap(Option.toArray)))
        seen.last =
          answers.length === 0
            ? "no member answered"
            : answers
                .map(({ member, role }) =>
                  role.isLeader
                    ? `${member.name} leads`
                    : `${member.name} ${role.hasLeader ? "follows" : "has no leader"}`
                )
                .join(", ")
        const leaders = answers.filter(({ role }) => role.isLeader)
        const [leader] = leaders
        // a resumed or cut-off old leader may still think it leads: wait until there is one, followed by all
        if (leader === undefined || leaders.length > 1) return Option.none()
        return answers.every(({ role }) => role.hasLeader) ? Option.some(leader.member) : Option.none()
      })

    const leader: Effect.Effect<EtcdMember, EtcdTestError> = Effect.suspend(() => {
      const seen = { last: "no member answered" }
      return findLeader(seen).pipe(
        Effect.flatten,
        Effect.retry(leaderPoll),
        Effect.timeout(leaderTimeout),
        Effect.catchAll(() =>
          Effect.fail(
            new EtcdTestError({
              operation: "leader",
              reason: "Timeout",
              detail: `no agreed leader within ${Duration.format(leaderTimeout)} (${seen.last})`
            })
          )
        )
      )
    }).pipe(Os.live, Effect.withSpan("EtcdCluster.leader"))

    const followers = Effect.flatMap(leader, (current) =>
      Effect.filter(
        members.filter(({ member }) => member !== current),
        ({ handle }) => Effect.map(handle.state, (state) => state === "Running")
      ).pipe(Effect.map((running) => running.map(({ member }) => member)))
    )

    const tls = group.certificates?.client
    const clientUrls = group.members.map((member) => member.clientUrl)
    const cluster: EtcdCluster = {
      members: members.map(({ member }) => member),
      clientUrls,
      directory: group.directory,
      tls,
      clientOptions: { endpoints: clientUrls, ...tls },
      leader,
      followers,
      start: group.startAll,
      stop: group.stopAll,
      wipe: group.wipe
    }
    return cluster
  }
)

/**
 * A cluster for the lifetime of the layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options?: EtcdClusterOptions): Layer.Layer<EtcdCluster, EtcdBinaryNotFound | EtcdTestError> =>
  Layer.scoped(EtcdCluster, make(options))

/**
 * An `EtcdClient` connected to every member of the running {@link EtcdCluster}.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerClient: Layer.Layer<EtcdClient.EtcdClient, InvalidOptions | EtcdError, EtcdCluster> =
  Layer.unwrapEffect(Effect.map(EtcdCluster, (cluster) => EtcdClient.layer(cluster.clientOptions)))
