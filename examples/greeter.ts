/**
 * A "greeter" HTTP service that registers itself in etcd while it runs.
 *
 *   ETCD_ENDPOINTS=http://127.0.0.1:2379 GREETER_NAME=greeter-1 node --import tsx examples/greeter.ts
 *
 * It listens on a free loopback port, registers `<GREETER_PREFIX><GREETER_NAME>`
 * → `http://127.0.0.1:<port>` with a short TTL, prints `ready <url>` on stdout,
 * and deregisters before it exits on SIGTERM or SIGINT.
 */
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Config from "effect/Config"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import { createServer } from "node:http"
import { EtcdClient, Registrar, TtlOption } from "../src/index.js"

const Greeter = Config.all({
  name: Config.string("GREETER_NAME"),
  prefix: Config.string("GREETER_PREFIX").pipe(Config.withDefault("/services/greeter/"))
})

// the HTTP server, on a free loopback port
const ServerLive = NodeHttpServer.layer(createServer, { port: 0, host: "127.0.0.1" })

// registered once the server listens; deregistered before it closes
const RegistrationLive = Layer.unwrapEffect(
  Effect.gen(function* () {
    const { name, prefix } = yield* Greeter
    const address = (yield* HttpServer.HttpServer).address
    const url = address._tag === "TcpAddress" ? `http://127.0.0.1:${address.port}` : "unix socket"
    const ttl = yield* TtlOption.make({ heartbeat: "500 millis", ttl: "2 seconds" })
    return Layer.effectDiscard(Console.log(`ready ${url}`)).pipe(
      Layer.provideMerge(Registrar.layer({ key: `${prefix}${name}`, value: url, ttl }))
    )
  })
)

const App = Layer.unwrapEffect(
  Effect.map(Greeter, ({ name }) =>
    HttpRouter.empty.pipe(HttpRouter.get("/hello", HttpServerResponse.text(`hello from ${name}`)), HttpServer.serve())
  )
)

// serve first, register last: on shutdown the key goes first, before the server stops
RegistrationLive.pipe(
  Layer.provide(App),
  Layer.provide(EtcdClient.layerConfig()),
  Layer.provide(ServerLive),
  Layer.launch,
  Logger.withMinimumLogLevel(LogLevel.Warning),
  NodeRuntime.runMain
)
