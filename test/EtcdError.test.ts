/**
 * How the etcd3 client's errors map to typed `EtcdError` reasons: what decides
 * whether a request is retried on another member (`Timeout`, `Unavailable`)
 * or ends (`Other`, `LeaseNotFound`, ...). The errors are built as grpc-js
 * hands them to etcd3 (a code, a message) and cast by etcd3 itself.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Etcd3 from "etcd3"
import { isTransient } from "../src/internal/client.js"
import { toEtcdError } from "../src/internal/etcd3.js"

/** An error as etcd3 raises it for a gRPC status `code` with the server's `details`. */
const fromServer = (code: number, status: string, details: string): Error =>
  Etcd3.castGrpcError(Object.assign(new Error(`${code} ${status}: ${details}`), { code, details }))

describe("toEtcdError", () => {
  it("a member that could not reach the leader in time (during an election) is a transient Timeout", () => {
    // etcd answers a keep-alive it cannot forward to a hung leader with code 2 and this message
    const error = toEtcdError("keepAlive", fromServer(2, "UNKNOWN", "context deadline exceeded"))
    expect(error.reason).toBe("Timeout")
    expect(isTransient(error)).toBe(true)
    expect(toEtcdError("put", fromServer(2, "UNKNOWN", "etcdserver: request timed out")).reason).toBe("Timeout")
    expect(toEtcdError("put", fromServer(4, "DEADLINE_EXCEEDED", "Deadline exceeded")).reason).toBe("Timeout")
  })

  it("an election in progress is Unavailable, a lost lease is LeaseNotFound, anything else is Other", () => {
    expect(toEtcdError("put", fromServer(14, "UNAVAILABLE", "etcdserver: leader changed")).reason).toBe("Unavailable")
    expect(toEtcdError("put", fromServer(2, "UNKNOWN", "etcdserver: no leader")).reason).toBe("Unavailable")
    const lost = toEtcdError("put", fromServer(5, "NOT_FOUND", "etcdserver: requested lease not found"))
    expect(lost.reason).toBe("LeaseNotFound")
    expect(isTransient(lost)).toBe(false)
    expect(toEtcdError("put", fromServer(2, "UNKNOWN", "something else went wrong")).reason).toBe("Other")
  })

  it("a stream reset without a gRPC status (etcd stopped under a watch) is a transient Unavailable", () => {
    // as grpc-js hands it to our own watch stream (not cast by etcd3), and as etcd3 casts it for a request
    const details = "Received RST_STREAM with code 0 (Call ended without gRPC status)"
    const raw = Object.assign(new Error(`13 INTERNAL: ${details}`), { code: 13, details })
    const error = toEtcdError("watch", raw)
    expect(error.reason).toBe("Unavailable")
    expect(isTransient(error)).toBe(true)
    expect(toEtcdError("put", fromServer(13, "INTERNAL", details)).reason).toBe("Unavailable")
    expect(toEtcdError("watch", fromServer(13, "INTERNAL", "Received RST_STREAM with code 2")).reason).toBe(
      "Unavailable"
    )
    // any other INTERNAL is still Other
    expect(toEtcdError("put", fromServer(13, "INTERNAL", "something else went wrong")).reason).toBe("Other")
  })

  it("a request to a closed client is Unavailable and says the client was closed (background deletes stop on it)", () => {
    const error = toEtcdError("delete", new Etcd3.ClientClosedError("Lease"))
    expect(error.reason).toBe("Unavailable")
    expect(error.detail).toContain("client was already closed")
  })
})
