// TEMPORARY stand-in until the Registrar and the Subscriber land
export { subscriber, registrar } from "./rawSide.js"
