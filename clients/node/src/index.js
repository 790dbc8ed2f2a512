// @relive/client: record events into a relive timeline from Node.js.

export { Recorder, RecorderError, RejectedEventsError, newProducerId } from "./recorder.js";
export { Hlc, HlcError, compareHlc, formatHlc, parseHlc } from "./hlc.js";
export { ConfigError, ionName, parseTraceparent, recorderEndpoint, resolveOptions, runName } from "./config.js";
export { LOADER_OPTIONS, loadPackage, protosDir } from "./protos.js";
export { fromStruct, toStruct } from "./struct.js";
