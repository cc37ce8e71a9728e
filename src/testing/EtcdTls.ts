/**
 * Throw-away TLS material for tests: a CA, a server certificate for 127.0.0.1 /
 * localhost and a client certificate, generated with the `openssl` command.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Path from "node:path"
import * as FsP from "node:fs/promises"
import * as Crypto from "node:crypto"
import { EtcdTestError } from "./EtcdTestError.js"
import * as Os from "./internal/os.js"

/**
 * The files a client needs for mutual TLS, named like the `EtcdClient` options
 * (`caCert`, `cert`, `key`): PEM file paths.
 *
 * @since 0.1.0
 * @category models
 */
export interface TlsFiles {
  /** The CA certificate that signed the server certificate. */
  readonly caCert: string
  /** The client certificate. */
  readonly cert: string
  /** The client private key. */
  readonly key: string
}

/**
 * Everything {@link generate} writes: the CA, the server pair (SAN `IP:127.0.0.1`,
 * `DNS:localhost`) and the client pair (CN `effect-sd-etcd-test-client`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Certificates {
  readonly caCert: string
  readonly caKey: string
  readonly server: { readonly cert: string; readonly key: string }
  /** What a client passes as `caCert` / `cert` / `key`. */
  readonly client: TlsFiles
}

const opensslConfig = `[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
`

const newKey = ["-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]

/**
 * Generates a CA, a server certificate and a client certificate (P-256 keys,
 * valid for 7 days) into `directory` (created if missing) with `openssl`.
 * Fails with `EtcdTestError` (operation `tls`) when openssl is missing or fails.
 *
 * @since 0.1.0
 * @category constructors
 */
export const generate: (directory: string) => Effect.Effect<Certificates, EtcdTestError> = Effect.fn(
  "EtcdTls.generate"
)(function* (directory: string) {
  yield* Effect.tryPromise({
    try: () => FsP.mkdir(directory, { recursive: true, mode: 0o700 }),
    catch: (cause) =>
      new EtcdTestError({ operation: "tls", reason: "Failed", detail: `could not create ${directory}`, cause })
  })
  yield* Os.writeFile(Path.join(directory, "openssl.cnf"), opensslConfig)
  const openssl = (...args: ReadonlyArray<string>) => Os.run("openssl", args, { cwd: directory, operation: "tls" })
  const serial = () => `0x${Crypto.randomBytes(8).toString("hex")}`
  yield* openssl(
    "req",
    "-config",
    "openssl.cnf",
    "-x509",
    "-new",
    ...newKey,
    "-keyout",
    "ca.key",
    "-out",
    "ca.crt",
    "-days",
    "7",
    "-subj",
    "/CN=effect-sd-etcd test CA",
    "-extensions",
    "ca_ext"
  )
  for (const [name, cn] of [
    ["server", "localhost"],
    ["client", "effect-sd-etcd-test-client"]
  ] as const) {
    yield* openssl(
      "req",
      "-config",
      "openssl.cnf",
      "-new",
      ...newKey,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.csr`,
      "-subj",
      `/CN=${cn}`
    )
    yield* openssl(
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.crt",
      "-CAkey",
      "ca.key",
      "-set_serial",
      serial(),
      "-days",
      "7",
      "-out",
      `${name}.crt`,
      "-extfile",
      "openssl.cnf",
      "-extensions",
      `${name}_ext`
    )
  }
  const file = (name: string) => Path.join(directory, name)
  return {
    caCert: file("ca.crt"),
    caKey: file("ca.key"),
    server: { cert: file("server.crt"), key: file("server.key") },
    client: { caCert: file("ca.crt"), cert: file("client.crt"), key: file("client.key") }
  }
})
