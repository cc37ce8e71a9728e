// TEMPORARY stand-in until the Balancer and Retry land
export const runMicro = async (_args: { readonly picks: number; readonly calls: number }) => ({})
