/**
 * The raw etcd3 sides: the baseline registrar and subscriber, and the floor (a
 * plain put / delete, no lease).
 */
import { rawClient, RawRegistrar, rawSubscribe } from "./raw.js"
import type { RegistrarSide, SideOptions, SubscriberSide } from "./side.js"

export const subscriber = async (options: SideOptions): Promise<SubscriberSide> => {
  const client = rawClient(options.endpoint)
  await client.maintenance.status()
  return {
    subscribe: async (prefix, tracker) => (await rawSubscribe(client, prefix, tracker)).stop,
    close: async () => client.close()
  }
}

export const registrar = async (options: SideOptions): Promise<RegistrarSide> => {
  const client = rawClient(options.endpoint)
  await client.maintenance.status()
  const registrar = new RawRegistrar(client, options.ttlSeconds)
  return {
    register: (key, value) => registrar.register(key, value),
    deregister: (key) => registrar.deregister(key),
    close: async () => {
      await registrar.deregisterAll()
      client.close()
    }
  }
}

/** The floor: a plain put and a plain delete, no lease. */
export const floor = async (options: SideOptions): Promise<RegistrarSide> => {
  const client = rawClient(options.endpoint)
  await client.maintenance.status()
  return {
    register: async (key, value) => {
      await client.put(key).value(value).exec()
    },
    deregister: async (key) => {
      await client.delete().key(key).exec()
    },
    close: async () => client.close()
  }
}
