/**
 * A group of etcd members that form one cluster (of one member for the single
 * server): binary, temp dir, TLS material, free ports (fresh ones when a port
 * turns out to be taken), and the whole-cluster operations.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as Path from "node:path"
import type { EtcdBinaryNotFound } from "../EtcdTestError.js"
import { EtcdTestError } from "../EtcdTestError.js"
import * as EtcdTls from "../EtcdTls.js"
import * as Member from "./member.js"
import * as Os from "./os.js"

/** The options shared by the single server and the cluster. */
export interface SpawnOptions {
  readonly binary?: string | undefined
  readonly tls?: boolean | undefined
  readonly extraArgs?: ReadonlyArray<string> | undefined
  readonly logLevel?: "debug" | "info" | "warn" | "error" | undefined
  readonly startTimeout?: Duration.DurationInput | undefined
  readonly stopTimeout?: Duration.DurationInput | undefined
  readonly directory?: string | undefined
}

export interface Group {
  readonly directory: string
  readonly certificates: EtcdTls.Certificates | undefined
  readonly clientTls: Os.ClientTls | undefined
  readonly members: ReadonlyArray<Member.MemberHandle>
  /** Starts every member that is not running, together, and waits until all are healthy. */
  readonly startAll: Effect.Effect<void, EtcdTestError>
  /** Stops every member, together. */
  readonly stopAll: Effect.Effect<void>
  /** Kills every member, deletes the data dirs, starts them again with a new cluster token. */
  readonly wipe: Effect.Effect<void, EtcdTestError>
}

const attempts = 3

/**
 * A lone member has no peers to lose touch with, so a short election timeout
 * only makes its (re)starts fast (it also lowers etcd's minimum lease TTL to 1 s).
 */
const singleNodeTiming: ReadonlyArray<string> = ["--heartbeat-interval", "25", "--election-timeout", "250"]

const startAll = (members: ReadonlyArray<Member.MemberHandle>): Effect.Effect<void, EtcdTestError> =>
  Effect.forEach(members, (member) => member.start, { concurrency: "unbounded", discard: true })

/** Spawns `names.length` members that form one cluster, and waits until all are healthy. */
export const make = (
  names: ReadonlyArray<string>,
  options: SpawnOptions
): Effect.Effect<Group, EtcdBinaryNotFound | EtcdTestError, Scope.Scope> =>
  Effect.gen(function* () {
    const binary = yield* Os.resolveBinary(options.binary)
    const directory = yield* Os.tempDirectory(options.directory)
    const certificates = options.tls === true ? yield* EtcdTls.generate(Path.join(directory, "tls")) : undefined
    const clientTls: Os.ClientTls | undefined =
      certificates === undefined
        ? undefined
        : {
            ca: yield* Os.readFile(certificates.client.caCert, "tls"),
            cert: yield* Os.readFile(certificates.client.cert, "tls"),
            key: yield* Os.readFile(certificates.client.key, "tls")
          }
    const startTimeout = Duration.decode(options.startTimeout ?? "20 seconds")
    const stopTimeout = Duration.decode(options.stopTimeout ?? "5 seconds")

    const attempt = Effect.gen(function* () {
      const ports = yield* Os.freePorts(names.length * 2)
      const port = (i: number): number => ports[i] ?? 0
      const initialCluster = names.map((name, i) => `${name}=http://127.0.0.1:${port(2 * i + 1)}`).join(",")
      const token = Member.newToken()
      const members = yield* Effect.forEach(names, (name, i) =>
        Member.make(
          {
            binary,
            name,
            directory,
            clientPort: port(2 * i),
            peerPort: port(2 * i + 1),
            initialCluster,
            tls:
              certificates === undefined || clientTls === undefined ? undefined : { certificates, client: clientTls },
            extraArgs: [...(names.length === 1 ? singleNodeTiming : []), ...(options.extraArgs ?? [])],
            logLevel: options.logLevel ?? "warn",
            startTimeout,
            stopTimeout
          },
          token
        )
      )
      yield* startAll(members).pipe(
        Effect.tapError(() =>
          Effect.forEach(members, (member) => Effect.zipRight(member.kill, Effect.ignore(member.wipeData)), {
            concurrency: "unbounded",
            discard: true
          })
        )
      )
      return members
    })

    const members = yield* attempt.pipe(
      Effect.tapError((error) =>
        error.reason === "PortInUse" ? Effect.logDebug("etcd port taken, retrying on fresh ports") : Effect.void
      ),
      Effect.retry({ times: attempts - 1, while: (error) => error.reason === "PortInUse" })
    )

    // A leader asked to stop first hands its leadership to a peer; if that peer is stopping or
    // paused too, it waits for etcd's request timeout (7 s). So: resume the paused, stop the
    // followers, then the leader, which has no one left to hand over to.
    const stopAll = Effect.gen(function* () {
      yield* Effect.forEach(members, (member) => member.resume, { discard: true })
      const leading = yield* Effect.forEach(
        members,
        (member) =>
          Effect.flatMap(member.state, (state) =>
            state === "Stopped"
              ? Effect.succeed(false)
              : member.role.pipe(
                  Effect.map((role) => role.isLeader),
                  Effect.orElseSucceed(() => false)
                )
          ),
        { concurrency: "unbounded" }
      )
      const stop = (lead: boolean) =>
        Effect.forEach(
          members.filter((_, i) => leading[i] === lead),
          (member) => member.stop,
          { concurrency: "unbounded", discard: true }
        )
      yield* stop(false)
      yield* stop(true)
    })
    // runs before the members' own finalizers, which then find nothing left to do
    yield* Effect.addFinalizer(() => stopAll)

    const wipe = Effect.gen(function* () {
      yield* Effect.forEach(members, (member) => member.kill, { concurrency: "unbounded", discard: true })
      yield* Effect.forEach(members, (member) => member.wipeData, { discard: true })
      const token = Member.newToken()
      for (const member of members) member.setToken(token)
      yield* startAll(members)
    })

    return { directory, certificates, clientTls, members, startAll: startAll(members), stopAll, wipe }
  })

/** `EtcdTestError` for an option that can never work. */
export const invalidOption = (detail: string): EtcdTestError =>
  new EtcdTestError({ operation: "options", reason: "Failed", detail })
