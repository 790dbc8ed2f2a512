// Loads the service definitions straight from protos/: proto-loader turns the
// .proto files into grpc-js client constructors at run time, so there is no
// generated JavaScript to keep in step with the protos.

import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** Options shared by every load: proto field names, 64-bit ints as strings. */
export const LOADER_OPTIONS = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});

const SERVICE_FILES = [
  "relive/recorder/v1/recorder.proto",
  "relive/registry/v1/registry.proto",
  "relive/executor/v1/executor.proto",
];

/**
 * The protos/ directory: RELIVE_PROTOS_DIR, else the repository's protos/
 * next to clients/node.
 */
export function protosDir(env = process.env) {
  const dir = env.RELIVE_PROTOS_DIR || path.resolve(HERE, "..", "..", "..", "protos");
  if (!existsSync(path.join(dir, SERVICE_FILES[0]))) {
    throw new Error(`relive protos not found in ${dir}: set RELIVE_PROTOS_DIR to the repository's protos/`);
  }
  return dir;
}

const cache = new Map();

/**
 * The relive services as a grpc-js package object:
 * `pkg.relive.recorder.v1.RecorderService`, `pkg.relive.registry.v1.RegistryService`, ...
 */
export function loadPackage(dir = protosDir()) {
  let pkg = cache.get(dir);
  if (!pkg) {
    const definition = protoLoader.loadSync(SERVICE_FILES, { ...LOADER_OPTIONS, includeDirs: [dir] });
    pkg = grpc.loadPackageDefinition(definition);
    cache.set(dir, pkg);
  }
  return pkg;
}
