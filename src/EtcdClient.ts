/**
 * The etcd client service: go-kit's `etcdv3.Client` surface plus the primitives
 * the Registrar and the Subscriber are built on.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import type * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import type * as Stream from "effect/Stream"
import type { EtcdError, InvalidOptions, NoKey, NoValue } from "./EtcdError.js"
import * as Etcd3 from "./internal/etcd3.js"
import * as Memory from "./internal/memory.js"
import type { Service } from "./Service.js"

/**
 * An etcd lease id (a 64-bit integer, kept as its decimal string).
 *
 * @since 0.1.0
 * @category models
 */
export type LeaseId = string

/**
 * A key and its value as read from etcd. `value` is the UTF-8 decoding of the
 * stored bytes; `malformed` is true when the value's bytes or the key's were
 * not valid UTF-8 (the value then holds replacement characters and should not
 * be trusted). A key that is not UTF-8 keeps each bad byte as a lone surrogate
 * (U+DC80 to U+DCFF), so that two such keys never read as one, nor as a
 * well-formed key; such a key cannot be written back through this client.
 *
 * @since 0.1.0
 * @category models
 */
export interface KeyValue {
  readonly key: string
  readonly value: string
  readonly malformed: boolean
  readonly createRevision: number
  readonly modRevision: number
  /** The lease the key is attached to, if any. */
  readonly lease: LeaseId | undefined
}

/**
 * The keys under a prefix and the store revision they were read at.
 *
 * @since 0.1.0
 * @category models
 */
export interface Listing {
  readonly revision: number
  readonly entries: ReadonlyArray<KeyValue>
  /**
   * The id of the cluster the listing was read from, when the client knows it.
   * Give it to the watch that follows (`WatchOptions.cluster`): a watch that
   * finds another cluster then fails with `Rewound`, even on its first connection.
   */
  readonly cluster?: string | undefined
}

/**
 * An event of a prefix watch.
 *
 * - `Put` / `Delete`: a change, with the revision it happened at; in revision order.
 * - `Disconnected`: the watch lost its connection; it reconnects by itself from the
 *   last revision seen, following the `reconnect` schedule.
 * - `Reconnected`: the watch is live again; `revision` is the store revision at that time.
 *
 * @since 0.1.0
 * @category models
 */
export type WatchEvent =
  | {
      readonly _tag: "Put"
      readonly key: string
      readonly value: string
      readonly malformed: boolean
      readonly revision: number
      readonly lease: LeaseId | undefined
    }
  | { readonly _tag: "Delete"; readonly key: string; readonly revision: number }
  | { readonly _tag: "Disconnected"; readonly error: EtcdError }
  | { readonly _tag: "Reconnected"; readonly revision: number }

/**
 * @since 0.1.0
 * @category models
 */
export interface WatchOptions {
  /** The first revision to deliver changes of (a listing's `revision + 1`). */
  readonly fromRevision: number
  /**
   * The cluster id `fromRevision` belongs to (a listing's `cluster`). The watch
   * fails with `Rewound` when it connects to another cluster (a wiped or
   * replaced one), or to a store whose revision is behind `fromRevision - 1`.
   * Without it, the first connection's cluster is the one followed.
   */
  readonly cluster?: string | undefined
  /**
   * When and how often to reconnect after a transient disconnect. Defaults to a
   * jittered exponential backoff from 100 ms capped at 2 s, forever.
   */
  readonly reconnect?: Schedule.Schedule<unknown, EtcdError> | undefined
}

/**
 * The etcd client service.
 *
 * Every request is bounded by `headerTimeoutPerRequest`; every failure is an
 * `EtcdError` that names the operation and the reason.
 *
 * @since 0.1.0
 * @category models
 */
export interface EtcdClient {
  // ---- go-kit's Client ----

  /**
   * The values of every key under `prefix` (normalised to end with `/`).
   */
  readonly getEntries: (prefix: string) => Effect.Effect<ReadonlyArray<string>, EtcdError>
  /**
   * go-kit's `WatchPrefix`: emits once at once, then a signal after changes under
   * `prefix` (normalised to end with `/`). Changes delivered together give one
   * signal: the changes of one revision (a lease's keys expiring), what one watch
   * response or burst carried, and what came while the stream was not being
   * read. So there may be fewer signals than changes, on etcd as in memory
   * (go-kit too signals once per watch response), but every change is followed
   * by one. A signal only: re-read with `getEntries`.
   */
  readonly watchPrefix: (prefix: string) => Stream.Stream<void, EtcdError>
  /**
   * go-kit's `Register`: puts the key (on a fresh lease of the service's TTL when
   * it has one) and returns the lease. Fails with `NoKey` / `NoValue` before
   * anything is written. No heartbeats: that is the Registrar's job.
   */
  readonly register: (service: Service) => Effect.Effect<Option.Option<LeaseId>, NoKey | NoValue | EtcdError>
  /**
   * go-kit's `Deregister`: deletes the key, and revokes the lease that
   * `register` granted for it (go-kit leaks it). Fails with `NoKey` on an empty key.
   */
  readonly deregister: (service: Service) => Effect.Effect<void, NoKey | EtcdError>

  // ---- primitives ----

  /** Grants a lease of `ttlSeconds` (a positive integer). */
  readonly grant: (ttlSeconds: number) => Effect.Effect<LeaseId, EtcdError>
  /** Renews a lease once; returns its TTL in seconds. Fails with `LeaseNotFound` when it is gone. */
  readonly keepAliveOnce: (lease: LeaseId) => Effect.Effect<number, EtcdError>
  /** Revokes a lease, deleting its keys. Fails with `LeaseNotFound` when it is gone. */
  readonly revoke: (lease: LeaseId) => Effect.Effect<void, EtcdError>
  /** Puts a key, optionally on a lease; returns the revision of the put. */
  readonly put: (
    key: string,
    value: string,
    options?: { readonly lease?: LeaseId | undefined }
  ) => Effect.Effect<number, EtcdError>
  /** Reads one key. */
  readonly get: (key: string) => Effect.Effect<Option.Option<KeyValue>, EtcdError>
  /** Deletes one key; returns how many keys were deleted (0 or 1) and the revision. */
  readonly delete: (key: string) => Effect.Effect<{ readonly deleted: number; readonly revision: number }, EtcdError>
  /** Lists every key starting with `prefix` (not normalised), with the revision read at. */
  readonly list: (prefix: string) => Effect.Effect<Listing, EtcdError>
  /**
   * Watches every key starting with `prefix` (not normalised), from
   * `options.fromRevision`. Reconnects by itself on transient disconnects,
   * resuming after the last revision seen. Fails when etcd cancels the watch:
   * `Compacted` (the revision is gone: list again), `Rewound` (the cluster was
   * wiped or replaced, or its revision went backwards: list again),
   * `PermissionDenied`, `Canceled`. A member that merely lags behind is not `Rewound`.
   */
  readonly watch: (prefix: string, options: WatchOptions) => Stream.Stream<WatchEvent, EtcdError>
  /** Compacts the key-value history up to `revision`. */
  readonly compact: (revision: number) => Effect.Effect<void, EtcdError>
  /**
   * The current store revision. It is read with a request on the key `"\0"`,
   * outside every prefix: a user whose role may read only its own prefix gets
   * `PermissionDenied`, and reads it from a listing of that prefix instead
   * (`list(prefix)` gives the revision it was read at). The library's own
   * reads of the revision (the watch's checks, `watchPrefix`, the Registrar's)
   * are made on the prefix concerned.
   */
  readonly revision: Effect.Effect<number, EtcdError>
}

/**
 * @since 0.1.0
 * @category tags
 */
export const EtcdClient: Context.Tag<EtcdClient, EtcdClient> =
  Context.GenericTag<EtcdClient>("effect-sd-etcd/EtcdClient")

/**
 * go-kit's `ClientOptions`, plus etcd authentication.
 *
 * @since 0.1.0
 * @category models
 */
export interface EtcdClientOptions {
  /**
   * Full URLs with scheme and port: `http://127.0.0.1:2379`, `https://etcd-0:2379`
   * (a scheme, a host and a port: no path, query or credentials). An endpoint
   * without a port is `InvalidOptions`: no default is guessed (etcd serves
   * clients on 2379 by default, a URL's default port would be 80 or 443).
   */
  readonly endpoints: ReadonlyArray<string>
  /** Client certificate file (PEM), for mutual TLS. Needs `key`, which must be its (unencrypted) key. */
  readonly cert?: string | undefined
  /** Client private key file (PEM), for mutual TLS. Needs `cert`. */
  readonly key?: string | undefined
  /** CA certificate file (PEM) that signed the server certificates. */
  readonly caCert?: string | undefined
  /**
   * How long building the client may take to reach a member; each member it
   * tries gets an equal share. Default 3 s. Every duration is at most about 24.8
   * days (a timer's limit).
   */
  readonly dialTimeout?: Duration.DurationInput | undefined
  /**
   * The gRPC keep-alive, both its ping interval and its ack timeout: the client
   * pings every `dialKeepAlive` but at least every 10 s on the wire (as grpc-go;
   * etcd refuses faster pings), and drops a connection whose ping is not
   * acknowledged within `dialKeepAlive`. Also how long a watch may stay silent
   * before it asks its member for a progress report: a member that does not
   * answer within `headerTimeoutPerRequest` is taken for hung and the watch moves
   * to another. Default 3 s.
   */
  readonly dialKeepAlive?: Duration.DurationInput | undefined
  /** Deadline of every request, and of each attempt on one member (keep-alives included). Default 3 s. */
  readonly headerTimeoutPerRequest?: Duration.DurationInput | undefined
  /** etcd user name (etcd auth). */
  readonly username?: string | undefined
  /** etcd password (etcd auth). */
  readonly password?: Redacted.Redacted | undefined
}

/**
 * Builds a client: validates the options (`InvalidOptions` before any network
 * call, TLS files' contents included), connects, and checks that a member
 * answers within `dialTimeout` (`EtcdError` with reason `Unavailable` or
 * `AuthFailed` otherwise).
 * The native client is closed when the scope closes.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (options: EtcdClientOptions) => Effect.Effect<EtcdClient, InvalidOptions | EtcdError, Scope.Scope> =
  Etcd3.make

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: EtcdClientOptions): Layer.Layer<EtcdClient, InvalidOptions | EtcdError> =>
  Layer.scoped(EtcdClient, make(options))

/** Whether a variable is unset, or set to nothing (empty or whitespace only). */
const unset = (value: string | undefined): boolean => value === undefined || value.trim() === ""

/** A variable that counts as unset when set to nothing. */
const optionalString = (name: string): Config.Config<string | undefined> =>
  Config.map(Config.option(Config.string(name)), (value) =>
    value._tag === "Some" && !unset(value.value) ? value.value : undefined
  )

/** A duration variable (as `Config.duration`) that counts as unset when set to nothing. */
const optionalDuration = (name: string): Config.Config<Duration.Duration | undefined> =>
  Config.nested(
    Config.mapOrFail(Config.option(Config.string()), (value) =>
      value._tag === "None" || unset(value.value)
        ? Either.right(undefined)
        : Either.flatMap(
            Either.fromOption(Duration.decodeUnknown(value.value), () =>
              ConfigError.InvalidData([], `Expected a duration but received ${JSON.stringify(value.value)}`)
            ),
            // zero, or a negative one (decoded to zero): said here, with the variable's name and what
            // it was set to (the client's check would name its option and the decoded zero)
            (duration) =>
              value.value.trim().startsWith("-") || !(Duration.toMillis(duration) > 0)
                ? Either.left(
                    ConfigError.InvalidData(
                      [],
                      `Expected a positive duration but received ${JSON.stringify(value.value)}`
                    )
                  )
                : Either.right(duration)
          )
    ),
    name
  )

/**
 * Reads the options from the environment:
 * `ETCD_ENDPOINTS` (comma-separated URLs), `ETCD_CERT`, `ETCD_KEY`, `ETCD_CACERT`,
 * `ETCD_DIAL_TIMEOUT`, `ETCD_DIAL_KEEPALIVE`, `ETCD_REQUEST_TIMEOUT` (durations such as `3 seconds`),
 * `ETCD_USERNAME`, `ETCD_PASSWORD`.
 *
 * `ETCD_CERT`, `ETCD_KEY`, `ETCD_CACERT` and the durations count as unset when
 * set to nothing (empty or whitespace only), as many deployment templates mean
 * it: `ETCD_CERT=` beside an `http://` endpoint is no TLS, `ETCD_DIAL_TIMEOUT=`
 * the default. `ETCD_ENDPOINTS` is required: set to nothing, it is
 * `InvalidOptions` (no endpoint).
 *
 * An empty (or whitespace-only) `ETCD_USERNAME` or `ETCD_PASSWORD` counts as
 * unset when the other one is empty or unset too, as many deployments mean it:
 * no authentication. When the other one is set to something, both are taken as
 * given: `ETCD_USERNAME=alice` with `ETCD_PASSWORD=` signs in with an empty
 * password, and a user name without any `ETCD_PASSWORD` (or a password with an
 * empty user name) is still `InvalidOptions`.
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<EtcdClientOptions> = Config.all({
  endpoints: Config.map(Config.string("ETCD_ENDPOINTS"), (s) =>
    s
      .split(",")
      .map((e) => e.trim())
      .filter((e) => e.length > 0)
  ),
  cert: optionalString("ETCD_CERT"),
  key: optionalString("ETCD_KEY"),
  caCert: optionalString("ETCD_CACERT"),
  dialTimeout: optionalDuration("ETCD_DIAL_TIMEOUT"),
  dialKeepAlive: optionalDuration("ETCD_DIAL_KEEPALIVE"),
  headerTimeoutPerRequest: optionalDuration("ETCD_REQUEST_TIMEOUT"),
  username: Config.option(Config.string("ETCD_USERNAME")),
  password: Config.option(Config.redacted("ETCD_PASSWORD"))
}).pipe(
  Config.map((c) => {
    const username = c.username._tag === "Some" ? c.username.value : undefined
    const password = c.password._tag === "Some" ? c.password.value : undefined
    // both unset or empty: no authentication; else both as given, for `make` to check
    const auth = !(unset(username) && unset(password === undefined ? undefined : Redacted.value(password)))
    return {
      endpoints: c.endpoints,
      cert: c.cert,
      key: c.key,
      caCert: c.caCert,
      dialTimeout: c.dialTimeout,
      dialKeepAlive: c.dialKeepAlive,
      headerTimeoutPerRequest: c.headerTimeoutPerRequest,
      username: auth ? username : undefined,
      password: auth ? password : undefined
    }
  })
)

/**
 * Builds the client from `Config` (by default {@link config}: `ETCD_ENDPOINTS` and friends).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config<EtcdClientOptions> = config
): Layer.Layer<EtcdClient, InvalidOptions | EtcdError | ConfigError.ConfigError> =>
  Layer.scoped(EtcdClient, Effect.flatMap(options, make))

// ---- the in-memory twin ----

/**
 * Controls of the in-memory etcd, for tests: faults, compaction, inspection.
 *
 * @since 0.1.0
 * @category testing
 */
export interface MemoryEtcdControl {
  /** Every request fails with `Unavailable` and every watch disconnects, until `restore`. */
  readonly setUnavailable: Effect.Effect<void>
  /** Ends an outage started by `setUnavailable`. */
  readonly restore: Effect.Effect<void>
  /** Revokes a lease as if it had expired or been revoked by someone else (its keys are deleted). */
  readonly loseLease: (lease: LeaseId) => Effect.Effect<void>
  /** Every lease currently alive, with its TTL in seconds. */
  readonly leases: Effect.Effect<ReadonlyMap<LeaseId, number>>
  /** How many keep-alive requests the store has served. */
  readonly keepAliveCount: Effect.Effect<number>
  /** Wipes the store: no keys, no leases, revision back to 1 (a replaced cluster). Open watches fail with `Rewound` when they reconnect. */
  readonly wipe: Effect.Effect<void>
  /** Direct access to the same store, bypassing faults. */
  readonly client: EtcdClient
}

/**
 * @since 0.1.0
 * @category testing
 */
export const MemoryEtcd: Context.Tag<MemoryEtcdControl, MemoryEtcdControl> =
  Context.GenericTag<MemoryEtcdControl>("effect-sd-etcd/MemoryEtcd")

/**
 * The same service in memory: revisions, leases that expire on the Effect
 * `Clock` (so `TestClock` drives them), watches from a revision, compaction,
 * and injectable faults through {@link MemoryEtcd}.
 *
 * @since 0.1.0
 * @category testing
 */
export const layerMemory: Layer.Layer<EtcdClient | MemoryEtcdControl> = Layer.scopedContext(
  Effect.map(Memory.make, ({ client, control }) =>
    Context.make(EtcdClient, client).pipe(Context.add(MemoryEtcd, control))
  )
)
