/**
 * go-kit's `etcdv3.Example()`, the Effect way: register foosvc, subscribe to
 * barsvc, call it through round robin + retry.
 *
 *   ETCD_ENDPOINTS=http://127.0.0.1:2379 node --import tsx examples/example.ts
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { pathToFileURL } from "node:url"
import { Balancer, EtcdClient, Registrar, Retry, Subscriber, TtlOption } from "../src/index.js"
import type { Endpoint } from "../src/index.js"

// Let's say this is a service that means to register itself.
const prefix = "/services/foosvc/" // known at compile time
const instance = "1.2.3.4:8080" // taken from runtime or platform, somehow
const key = prefix + instance // should be globally unique
const value = "http://" + instance // based on our transport

// Register our instance while the program runs; the layer's finalizer
// deregisters it, on success, failure, interruption, SIGTERM and SIGINT alike:
// there is no `defer registrar.Deregister()` to forget.
export const FooRegistration = Layer.unwrapEffect(
  Effect.map(TtlOption.make({ heartbeat: "3 seconds", ttl: "10 seconds" }), (ttl) =>
    Registrar.layer({ key, value, ttl })
  )
)

// It's likely that we'll also want to connect to other services and call their
// methods: a subscriber listens for changes from etcd and builds endpoints.
type BarRequest = Record<string, never>
type BarResponse = Record<string, never>
export class BarSvc extends Subscriber.Tag<BarSvc, BarRequest, BarResponse>()("example/BarSvc") {}

// go-kit's `barFactory`: an endpoint per instance (here a no-op, like endpoint.Nop)
const barFactory = (_instance: string) =>
  Effect.succeed<Endpoint.Endpoint<BarRequest, BarResponse>>(() => Effect.succeed({}))

export const BarSubscriber = Subscriber.layer(BarSvc, { prefix: "/services/barsvc", factory: barFactory })

// Wrap the subscriber in a load balancer and a retry strategy, and call it
// like any other endpoint.
export const program = Effect.gen(function* () {
  const barsvc = yield* BarSvc
  const retry = yield* Retry.retry(Balancer.roundRobin(barsvc), { max: 3, timeout: "3 seconds" })
  return yield* retry({})
})

export const main = program.pipe(
  Effect.provide(Layer.merge(FooRegistration, BarSubscriber)),
  Effect.provide(EtcdClient.layerConfig())
)

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  NodeRuntime.runMain(main)
}
