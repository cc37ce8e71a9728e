/**
 * A registration: validation and the register / deregister state machine of
 * one service. Leases, heartbeats, key watches and self-healing live in
 * `registrarLease.ts`.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberRef from "effect/FiberRef"
import * as LogLevel from "effect/LogLevel"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import type * as Subscribable from "effect/Subscribable"
import { EtcdClient } from "../EtcdClient.js"
import type { InvalidOptions, EtcdError } from "../EtcdError.js"
import { NoKey, NoValue } from "../EtcdError.js"
import type { Service } from "../Service.js"
import * as TtlOption from "../TtlOption.js"
import { addFinalizer } from "./finalizer.js"
import { Lock } from "./lock.js"
import * as Lease from "./registrarLease.js"
import { traced } from "./tracing.js"
import { RegistrationState, StateCell } from "./registrarState.js"

/** A registration handle (the public `Registration`). */
export interface Registration {
  readonly service: Service
  readonly state: Subscribable.Subscribable<RegistrationState>
  readonly register: Effect.Effect<void, EtcdError>
  readonly deregister: Effect.Effect<void, EtcdError>
}

/** A handle, and its end: deregisters for good (what the scope's finalizer runs). */
interface Handle {
  readonly registration: Registration
  readonly close: Effect.Effect<void, EtcdError>
}

/**
 * Checks a service before anything is sent to etcd: `NoKey`, `NoValue`, and
 * the TTL option again (it is a plain record, so it may have been built by
 * hand), which yields `InvalidOptions`.
 */
export const validate = (service: Service): Effect.Effect<Service, NoKey | NoValue | InvalidOptions> =>
  Effect.gen(function* () {
    if (service.key.length === 0) return yield* new NoKey()
    if (service.value.length === 0) return yield* new NoValue()
    if (service.ttl === undefined) return { key: service.key, value: service.value }
    if (TtlOption.isValidated(service.ttl)) return { key: service.key, value: service.value, ttl: service.ttl }
    const ttl = yield* TtlOption.make({ heartbeat: service.ttl.heartbeat, ttl: service.ttl.ttl })
    return { key: service.key, value: service.value, ttl }
  })

/**
 * An info log with annotations, skipped before the annotations are built when
 * the minimum log level is above Info: annotating costs more than the
 * registration's own bookkeeping (issue 7), and most production services log
 * from Warning up.
 */
const logInfo = (message: string, annotations: Record<string, unknown>): Effect.Effect<void> =>
  Effect.flatMap(FiberRef.get(FiberRef.currentMinimumLogLevel), (minimum) =>
    LogLevel.greaterThan(minimum, LogLevel.Info)
      ? Effect.void
      : Effect.logInfo(message).pipe(Effect.annotateLogs(annotations))
  )

/** Builds an unregistered handle. */
export const makeHandle = (client: EtcdClient, service: Service): Effect.Effect<Handle> =>
  Effect.gen(function* () {
    const state = new StateCell(RegistrationState.Registering())
    const mutex = new Lock(1)
    const lock = mutex.withPermits(1)
    let current: { readonly group: Lease.Group; readonly member: Lease.Member } | undefined
    // whether the state is Registering already (a new handle): the first register sends its grant sooner
    let fresh = true
    // whether its scope has closed: nothing registers it again, nothing would deregister it
    let closed = false

    const register = lock(
      Effect.uninterruptibleMask((restore) =>
        Effect.gen(function* () {
          if (current !== undefined) return
          if (closed) {
            return yield* Effect.dieMessage(
              `register on the registration of ${service.key} after its scope closed: nothing would deregister it`
            )
          }
          if (fresh) fresh = false
          else yield* state.set(RegistrationState.Registering())
          const member: Lease.Member = {
            entry: { key: service.key, value: service.value },
            state,
            lastPut: 0,
            group: undefined
          }
          const joined = yield* Effect.exit(restore(Lease.join(client, service.ttl, member)))
          if (Exit.isFailure(joined)) {
            // interrupted after joining: undo it
            if (member.group !== undefined) yield* Effect.ignore(Lease.leave(member.group, member))
            yield* state.set(RegistrationState.Deregistered())
            return yield* joined
          }
          const group = joined.value
          current = { group, member }
          yield* Metric.increment(Lease.registrations)
          yield* logInfo("register", { key: service.key, lease: Lease.currentLease(group) ?? "none" })
        })
      )
    ).pipe(traced("Registrar.register", service.key))

    // how a deregistration ended: counted, and logged (lease: the one the key was on)
    const reported = (lease: string, left: Exit.Exit<void, EtcdError>) =>
      Effect.gen(function* () {
        yield* Metric.increment(Lease.deregistrations)
        if (Exit.isSuccess(left)) {
          yield* logInfo("deregister", { key: service.key, lease })
        } else {
          // the reason on one line, as the other warnings give it (a cause would print a stack trace)
          const error = Option.match(Cause.failureOption(left.cause), {
            onNone: () => Cause.pretty(left.cause),
            onSome: (e) => e.message
          })
          yield* Effect.logWarning("deregister: removing the key failed").pipe(
            Effect.annotateLogs({ key: service.key, lease, error })
          )
        }
        return yield* left
      })
    const leave = Effect.gen(function* () {
      if (current === undefined) return
      const { group, member } = current
      current = undefined
      const lease = Lease.currentLease(group) ?? "none"
      return yield* reported(lease, yield* Effect.exit(Lease.leave(group, member)))
    })
    // Lease.leaveAtOnce: when nobody holds either lock, the revoke is sent before any effect runs.
    // Call uninterruptibly: the effect it answers gives the lock back
    const leaveAtOnce = (): Effect.Effect<void, EtcdError> | undefined => {
      if (current === undefined || !mutex.tryTake(1)) return undefined
      const { group, member } = current
      const lease = Lease.currentLease(group) ?? "none"
      const started = Lease.leaveAtOnce(group, member)
      if (started === undefined) {
        mutex.release(1)
        return undefined
      }
      current = undefined
      const rest = Effect.suspend(() =>
        Effect.ensuring(
          Effect.flatMap(Effect.exit(started.leaving), (left) => reported(lease, left)),
          Effect.sync(() => mutex.release(1))
        )
      )
      // the request on its way first (see Lease.nextTurn)
      return started.sent ? Effect.zipRight(Lease.nextTurn, rest) : rest
    }
    const deregister = Effect.uninterruptible(Effect.suspend(() => leaveAtOnce() ?? lock(leave))).pipe(
      traced("Registrar.deregister", service.key)
    )
    // a register already holding the lock finishes first, and is deregistered; a later one dies
    const close = Effect.suspend(() => {
      closed = true
      return deregister
    })

    const registration = {
      service,
      get state() {
        return state.view
      },
      register,
      deregister
    } satisfies Registration
    return { registration, close }
  })

/** Validates, registers, and deregisters when the scope closes. */
export const make = (
  service: Service
): Effect.Effect<Registration, NoKey | NoValue | InvalidOptions | EtcdError, EtcdClient | Scope.Scope> =>
  Effect.gen(function* () {
    const valid = yield* validate(service)
    const client = yield* EtcdClient
    const { close, registration } = yield* makeHandle(client, valid)
    yield* addFinalizer(Effect.ignore(close))
    yield* registration.register
    return registration
  })
