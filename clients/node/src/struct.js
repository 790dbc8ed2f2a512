// JSON-like values to google.protobuf.Struct, in proto-loader's object form.

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
  if (value === null || value === undefined) return { null_value: "NULL_VALUE" };
  switch (typeof value) {
    case "number":
      return { number_value: value };
    case "bigint":
      return { number_value: Number(value) };
    case "string":
      return { string_value: value };
    case "boolean":
      return { bool_value: value };
    default:
      break;
  }
  if (Array.isArray(value)) return { list_value: { values: value.map(toValue) } };
  if (value instanceof Date) return { string_value: value.toISOString() };
  if (typeof value === "object") return { struct_value: toStruct(value) };
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
    case "number_value":
      return value.number_value;
    case "string_value":
      return value.string_value;
    case "bool_value":
      return value.bool_value;
    case "struct_value":
      return fromStruct(value.struct_value);
    case "list_value":
      return (value.list_value.values ?? []).map(fromValue);
    default:
      return null;
  }
}
