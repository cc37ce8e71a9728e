/**
 * etcd authentication for tests: enable auth with a root user, create roles
 * with permissions on key prefixes, create users with those roles. Works on an
 * `EtcdServer` or an `EtcdCluster` (anything with client URLs and, in TLS mode,
 * the client's TLS files).
 *
 * @since 0.1.0
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import { Etcd3, Range } from "etcd3"
import type { IOptions, IPermissionRequest } from "etcd3"
import { EtcdTestError } from "./EtcdTestError.js"
import type { TlsFiles } from "./EtcdTls.js"
import * as Os from "./internal/os.js"

/**
 * Where to send the requests: an `EtcdServer` or an `EtcdCluster` fits.
 *
 * @since 0.1.0
 * @category models
 */
export interface Target {
  readonly clientUrls: ReadonlyArray<string>
  readonly tls?: TlsFiles | undefined
}

/**
 * What a role may do on a key prefix.
 *
 * @since 0.1.0
 * @category models
 */
export type Permission = "Read" | "Write" | "ReadWrite"

/**
 * A permission on every key that starts with `prefix`.
 *
 * @since 0.1.0
 * @category models
 */
export interface PrefixPermission {
  readonly prefix: string
  readonly permission: Permission
}

const requestTimeout = Duration.seconds(10)

const withClient = <A>(
  target: Target,
  rootPassword: Redacted.Redacted<string> | undefined,
  what: string,
  f: (client: Etcd3) => Promise<A>
): Effect.Effect<A, EtcdTestError> =>
  Effect.gen(function* () {
    const credentials: IOptions["credentials"] =
      target.tls === undefined
        ? undefined
        : {
            rootCertificate: yield* Os.readFile(target.tls.caCert, "auth"),
            certChain: yield* Os.readFile(target.tls.cert, "auth"),
            privateKey: yield* Os.readFile(target.tls.key, "auth")
          }
    const options: IOptions = {
      hosts: [...target.clientUrls],
      // the server certificate names localhost too; without the override grpc-js sends the IP as TLS server name
      ...(credentials === undefined
        ? {}
        : { credentials, grpcOptions: { "grpc.ssl_target_name_override": "localhost" } }),
      ...(rootPassword === undefined ? {} : { auth: { username: "root", password: Redacted.value(rootPassword) } })
    }
    return yield* Effect.acquireUseRelease(
      Effect.sync(() => new Etcd3(options)),
      (client) =>
        Effect.tryPromise({
          try: () => f(client),
          catch: (cause) =>
            new EtcdTestError({
              operation: "auth",
              reason: "Failed",
              detail: `${what}: ${cause instanceof Error ? cause.message : String(cause)}${
                // etcd's answer to a request without credentials once auth is on
                rootPassword === undefined && String(cause).includes("user name is empty")
                  ? " (authentication is enabled already: was EtcdAuth.enable called before?)"
                  : ""
              }`,
              cause
            })
        }).pipe(
          Effect.timeoutFail({
            duration: requestTimeout,
            onTimeout: () =>
              new EtcdTestError({
                operation: "auth",
                reason: "Timeout",
                detail: `${what}: no answer within ${Duration.format(requestTimeout)}`
              })
          })
        ),
      (client) => Effect.sync(() => client.close())
    )
  }).pipe(Os.live)

/**
 * Creates the `root` user with `rootPassword`, grants it the `root` role and
 * enables authentication. From then on every request needs credentials.
 *
 * @since 0.1.0
 * @category auth
 */
export const enable: (target: Target, rootPassword: Redacted.Redacted<string>) => Effect.Effect<void, EtcdTestError> =
  Effect.fn("EtcdAuth.enable")(function* (target: Target, rootPassword: Redacted.Redacted<string>) {
    yield* withClient(target, undefined, "enable auth", async (client) => {
      await client.user("root").create(Redacted.value(rootPassword))
      await client.user("root").addRole("root")
      await client.auth.authEnable()
    })
  })

/**
 * Disables authentication (as `root`).
 *
 * @since 0.1.0
 * @category auth
 */
export const disable: (target: Target, rootPassword: Redacted.Redacted<string>) => Effect.Effect<void, EtcdTestError> =
  Effect.fn("EtcdAuth.disable")(function* (target: Target, rootPassword: Redacted.Redacted<string>) {
    yield* withClient(target, rootPassword, "disable auth", async (client) => {
      await client.auth.authDisable()
    })
  })

/**
 * Creates a role (as `root`) with permissions on key prefixes.
 *
 * @since 0.1.0
 * @category auth
 */
export const createRole: (
  target: Target,
  options: {
    readonly rootPassword: Redacted.Redacted<string>
    readonly role: string
    readonly permissions: ReadonlyArray<PrefixPermission>
  }
) => Effect.Effect<void, EtcdTestError> = Effect.fn("EtcdAuth.createRole")(function* (
  target: Target,
  options: {
    readonly rootPassword: Redacted.Redacted<string>
    readonly role: string
    readonly permissions: ReadonlyArray<PrefixPermission>
  }
) {
  yield* withClient(target, options.rootPassword, `create role ${options.role}`, async (client) => {
    const role = await client.role(options.role).create()
    const requests: Array<IPermissionRequest> = options.permissions.map(({ permission, prefix }) => ({
      permission: permission === "ReadWrite" ? "Readwrite" : permission,
      range: Range.prefix(prefix)
    }))
    if (requests.length > 0) await role.grant(requests)
  })
})

/**
 * Creates a user (as `root`) with a password and roles.
 *
 * @since 0.1.0
 * @category auth
 */
export const createUser: (
  target: Target,
  options: {
    readonly rootPassword: Redacted.Redacted<string>
    readonly user: string
    readonly password: Redacted.Redacted<string>
    readonly roles: ReadonlyArray<string>
  }
) => Effect.Effect<void, EtcdTestError> = Effect.fn("EtcdAuth.createUser")(function* (
  target: Target,
  options: {
    readonly rootPassword: Redacted.Redacted<string>
    readonly user: string
    readonly password: Redacted.Redacted<string>
    readonly roles: ReadonlyArray<string>
  }
) {
  yield* withClient(target, options.rootPassword, `create user ${options.user}`, async (client) => {
    const user = await client.user(options.user).create(Redacted.value(options.password))
    for (const role of options.roles) await user.addRole(role)
  })
})
