// JSON-like values to google.protobuf.Struct, in proto-loader's object form.
// protobufjs defines the well-known types itself, with camelCase field names,
// whatever keepCase says for the relive messages.

/** @param {Record<string, unknown>} object */
export function toStruct(object) {
  if (object === null || typeof object !== "object" || Array.isArray(object)) {
    throw new TypeError("attributes must be a plain object");
  }
  const fields = {};
  for (const [key, value] of Object.entries(object)) {
    if (value !== undefined) fields[key] = toValue(value);
  }
  return { fields };
}

/** @param {unknown} value */
export function toValue(value) {
  if (value === null || value === undefined) return { nullValue: "NULL_VALUE" };
  switch (typeof value) {
    case "number":
      return { numberValue: value };
    case "bigint":
      return { numberValue: Number(value) };
    case "string":
      return { stringValue: value };
    case "boolean":
      return { boolValue: value };
    default:
      break;
  }
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  if (value instanceof Date) return { stringValue: value.toISOString() };
  if (typeof value === "object") return { structValue: toStruct(value) };
  throw new TypeError(`cannot record a ${typeof value} as an attribute`);
}

/** google.protobuf.Struct (proto-loader object form) back to a plain object. */
export function fromStruct(struct) {
  const out = {};
  for (const [key, value] of Object.entries(struct?.fields ?? {})) out[key] = fromValue(value);
  return out;
}

export function fromValue(value) {
  switch (value?.kind) {
    case "numberValue":
      return value.numberValue;
    case "stringValue":
      return value.stringValue;
    case "boolValue":
      return value.boolValue;
    case "structValue":
      return fromStruct(value.structValue);
    case "listValue":
      return (value.listValue.values ?? []).map(fromValue);
    default:
      return null;
  }
}
