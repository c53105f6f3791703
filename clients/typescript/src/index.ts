// The public surface of @callisto/client.
export { CallistoClient, type ClientOptions } from "./client.js";
