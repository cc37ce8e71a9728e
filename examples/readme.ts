/**
 * The README's example: a service that registers itself and calls another.
 *
 *   ETCD_ENDPOINTS=http://127.0.0.1:2379 node --import tsx examples/readme.ts
 */
import type { HttpClientError, HttpClientResponse } from "@effect/platform"
import { HttpClientRequest } from "@effect/platform"
import { NodeHttpClient, NodeRuntime } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { Balancer, EtcdClient, HttpEndpoint, Registrar, Retry, Subscriber, TtlOption } from "../src/index.js"

// Who we are: registered while the program runs, deregistered when it ends
// (success, failure, interruption, SIGTERM or SIGINT alike).
const Registration = Layer.unwrapEffect(
  Effect.map(TtlOption.make({ heartbeat: "3 seconds", ttl: "10 seconds" }), (ttl) =>
    Registrar.layer({ key: "/services/foosvc/10.0.0.7:8080", value: "http://10.0.0.7:8080", ttl })
  )
)

// Whom we call: every instance under /services/barsvc/ becomes an HTTP endpoint
// (filterStatusOk: a non-2xx answer is an error, so the retry tries another instance).
class BarSvc extends Subscriber.Tag<
  BarSvc,
  HttpClientRequest.HttpClientRequest,
  HttpClientResponse.HttpClientResponse,
  HttpClientError.HttpClientError
>()("app/BarSvc") {}
const Bar = Subscriber.layer(BarSvc, {
  prefix: "/services/barsvc",
  factory: HttpEndpoint.factory({ filterStatusOk: true })
})

const program = Effect.gen(function* () {
  const bar = yield* BarSvc
  // go-kit's lb.Retry(3, 3*time.Second, lb.NewRoundRobin(subscriber))
  const call = yield* Retry.retry(Balancer.roundRobin(bar), { max: 3, timeout: "3 seconds" })
  const response = yield* call(HttpClientRequest.get("/hello"))
  yield* Effect.log(yield* response.text)
})

program.pipe(
  Effect.provide(Layer.mergeAll(Registration, Bar)),
  Effect.provide(Layer.merge(EtcdClient.layerConfig(), NodeHttpClient.layerUndici)), // ETCD_ENDPOINTS=...
  NodeRuntime.runMain
)
