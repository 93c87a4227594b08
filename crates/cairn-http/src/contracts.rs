//! The contracts: AsyncAPI from the event registry, TypeScript from the schemas, and
//! `cairn contracts export`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use cairn_dispatch::{Registry, Route};
use cairn_log::RecordedEvent;
use cairn_types::Metadata;

use crate::api::components_generator;

/// Rewrites `#/$defs/X` references to `#/components/schemas/X`, everywhere in a value.
fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if let Some(Value::String(reference)) = object.get_mut("$ref")
                && let Some(name) = reference.strip_prefix("#/$defs/")
            {
                *reference = format!("#/components/schemas/{name}");
            }
            for item in object.values_mut() {
                rewrite_refs(item);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// Files a root schema (with its `$defs`) under `components` as `name`.
fn hoist(name: &str, schema: &Value, components: &mut Map<String, Value>) {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        if let Some(Value::Object(defs)) = object.remove("$defs") {
            for (def_name, mut def) in defs {
                rewrite_refs(&mut def);
                components.entry(def_name).or_insert(def);
            }
        }
    }
    rewrite_refs(&mut schema);
    components.insert(name.to_owned(), schema);
}

/// The AsyncAPI 3.0 document of every stream type and event type in the registry.
pub fn asyncapi(registry: &Registry) -> Value {
    let mut generator = components_generator();
    generator.subschema_for::<RecordedEvent>();
    generator.subschema_for::<Metadata>();
    let feed_message = generator.subschema_for::<cairn_realtime::Message>();
    let feed_query = generator.subschema_for::<crate::stream::StreamQuery>();
    let mut views = Map::new();
    for (stream_type, view) in registry.all_views() {
        views.insert(
            view.name().to_owned(),
            json!({
                "stream_type": stream_type.as_str(),
                "schema": view.schema(&mut generator),
            }),
        );
    }
    let mut schemas = generator.take_definitions(true);
    let envelope = schemas
        .get("RecordedEvent")
        .cloned()
        .unwrap_or_else(|| json!({}));

    let mut messages = Map::new();
    let mut channels = Map::new();
    let mut operations = Map::new();
    for (stream_type, route) in registry.routes() {
        let mut channel_messages = Map::new();
        for spec in registry
            .specs()
            .filter(|spec| &spec.stream_type == stream_type)
        {
            hoist(spec.payload_type, &spec.schema, &mut schemas);
            let mut payload = envelope.clone();
            if let Some(properties) = payload.get_mut("properties").and_then(Value::as_object_mut) {
                properties.insert(
                    "event_type".into(),
                    json!({"const": spec.event_type.as_str()}),
                );
                properties.insert("stream_type".into(), json!({"const": stream_type.as_str()}));
                properties.insert(
                    "event_data".into(),
                    json!({"$ref": format!("#/components/schemas/{}", spec.payload_type)}),
                );
            }
            let name = spec.event_type.as_str().to_owned();
            // Older versions: what earlier releases stored. Never delivered as such
            // (every reader gets the current version), so in the components only.
            for upcaster in &spec.upcasters {
                let mut old_schema = upcaster.schema();
                if let Some(object) = old_schema.as_object_mut() {
                    object.insert("x-event-version".into(), json!(upcaster.from));
                    object.insert("x-current".into(), json!(false));
                }
                hoist(upcaster.payload_type, &old_schema, &mut schemas);
                let mut old_payload = payload.clone();
                if let Some(properties) = old_payload
                    .get_mut("properties")
                    .and_then(Value::as_object_mut)
                {
                    properties.insert(
                        "event_data".into(),
                        json!({"$ref": format!("#/components/schemas/{}", upcaster.payload_type)}),
                    );
                }
                let old_name = format!("{name}.v{}", upcaster.from);
                messages.insert(
                    old_name.clone(),
                    json!({
                        "name": old_name,
                        "title": format!("{} (version {})", spec.event_type, upcaster.from),
                        "summary": format!(
                            "{} Version {} as earlier releases stored it; every reader gets it upcast to version {}.",
                            spec.description, upcaster.from, spec.version
                        ),
                        "contentType": "application/json",
                        "payload": old_payload,
                        "x-event-version": upcaster.from,
                        "x-current": false,
                    }),
                );
            }
            messages.insert(
                name.clone(),
                json!({
                    "name": name,
                    "title": spec.event_type.as_str(),
                    "summary": spec.description,
                    "contentType": "application/json",
                    "payload": payload,
                    "x-event-version": spec.version,
                }),
            );
            channel_messages.insert(
                name.clone(),
                json!({"$ref": format!("#/components/messages/{name}")}),
            );
        }
        let description = match route {
            Route::NoOp { reason } => format!(
                "Events of stream type {stream_type}: {reason}. Processed by an explicit no-op route."
            ),
            Route::Router(_) => {
                format!("Events of stream type {stream_type}, routed to their handlers.")
            }
        };
        channels.insert(
            stream_type.to_string(),
            json!({
                "address": format!("events/{stream_type}"),
                "description": description,
                "messages": channel_messages,
            }),
        );
        operations.insert(
            format!("receive_{stream_type}"),
            json!({
                "action": "receive",
                "channel": {"$ref": format!("#/channels/{stream_type}")},
                "summary": format!("Receive {stream_type} events, in log position order."),
            }),
        );
    }
    let feed_description = "The live feed: catch-up from the log after a position, then live, with no gap and no \
        duplicate. The policy decides when the subscription opens (scope events:subscribe, or an organization \
        admin for their own organization) and again for every event. Messages: `subscribed` first; `event` \
        (its `position` is the resume point; `views` carries the current views of its stream); `heartbeat` \
        after each silence of `heartbeat` seconds (its `position` is a resume point too); `end` last, saying \
        why (token_expired, server_shutdown, unavailable) and where to resume. Bearer token in the \
        Authorization header, or `access_token` in the query for clients that cannot set headers.";
    for (name, address, protocol, transport) in [
        (
            "feed",
            "/v1/events/stream",
            "http",
            "Server-Sent Events: each SSE event's `event` is the message type, its `id` the position to resume after (`Last-Event-ID`), its `data` the message.",
        ),
        (
            "socket",
            "/v1/events/ws",
            "ws",
            "A WebSocket: one message per text frame; the server pings every heartbeat and closes a silent connection (close code 4001: token expired; 4003: the subscriber's own access changed, reconnect; 1001: shutting down).",
        ),
    ] {
        let message_name = format!("{name}_message");
        messages.insert(
            message_name.clone(),
            json!({
                "name": message_name,
                "title": "A feed message",
                "summary": "subscribed, event, heartbeat or end",
                "contentType": "application/json",
                "payload": feed_message,
            }),
        );
        channels.insert(
            name.to_owned(),
            json!({
                "address": address,
                "title": format!("The live feed over {protocol}"),
                "description": format!("{feed_description} {transport}"),
                "messages": {message_name.clone(): {"$ref": format!("#/components/messages/{message_name}")}},
                "bindings": {
                    protocol: if protocol == "ws" {
                        json!({"method": "GET", "query": feed_query, "bindingVersion": "0.1.0"})
                    } else {
                        json!({"method": "GET", "query": feed_query, "bindingVersion": "0.3.0"})
                    }
                },
            }),
        );
        operations.insert(
            format!("follow_{name}"),
            json!({
                "action": "receive",
                "channel": {"$ref": format!("#/channels/{name}")},
                "summary": format!("Follow the events the caller may receive, live, at {address}."),
            }),
        );
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "cairn events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every event in cairn's log: its stream type, its event type, its payload schema \
                            (derived from the payload's Rust type; appends are checked against it) and the \
                            envelope every event is stored and delivered in. Event names: dots separate \
                            levels, underscores join words.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "sse": {"host": "{host}", "protocol": "http", "description": "cairn serve, Server-Sent Events at /v1/events/stream",
                    "variables": {"host": {"default": "127.0.0.1:8080"}}},
            "ws": {"host": "{host}", "protocol": "ws", "description": "cairn serve, WebSocket at /v1/events/ws",
                   "variables": {"host": {"default": "127.0.0.1:8080"}}},
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
        "x-views": views,
    })
}

fn ts_name(reference: &str) -> String {
    let name = reference.rsplit('/').next().unwrap_or(reference);
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn ts_property(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// The TypeScript type of a JSON Schema.
fn ts_type(schema: &Value, indent: usize) -> String {
    let Some(object) = schema.as_object() else {
        return if schema == &Value::Bool(false) {
            "never".into()
        } else {
            "unknown".into()
        };
    };
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        // A reference with properties beside it (a tagged enum's variant carries its
        // tag that way) is the referenced type and those properties together.
        return if object.contains_key("properties") {
            format!("{} & {}", ts_name(reference), ts_object(object, indent))
        } else {
            ts_name(reference)
        };
    }
    if let Some(constant) = object.get("const") {
        return constant.to_string();
    }
    if let Some(values) = object.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(" | ");
    }
    for (key, joiner) in [("oneOf", " | "), ("anyOf", " | "), ("allOf", " & ")] {
        if let Some(parts) = object.get(key).and_then(Value::as_array) {
            let parts: Vec<String> = parts
                .iter()
                .map(|part| format!("({})", ts_type(part, indent)))
                .collect();
            return parts.join(joiner);
        }
    }
    let types: Vec<&str> = match object.get("type") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ if object.contains_key("properties") => vec!["object"],
        _ => return "unknown".into(),
    };
    let rendered: Vec<String> = types
        .iter()
        .map(|kind| match *kind {
            "string" => "string".to_owned(),
            "integer" | "number" => "number".to_owned(),
            "boolean" => "boolean".to_owned(),
            "null" => "null".to_owned(),
            "array" => {
                let items = object
                    .get("items")
                    .map_or_else(|| "unknown".to_owned(), |items| ts_type(items, indent));
                format!("Array<{items}>")
            }
            _ => ts_object(object, indent),
        })
        .collect();
    rendered.join(" | ")
}

fn ts_object(object: &Map<String, Value>, indent: usize) -> String {
    let required: Vec<&str> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let pad = "  ".repeat(indent + 1);
    let mut lines = Vec::new();
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            let optional = if required.contains(&name.as_str()) {
                ""
            } else {
                "?"
            };
            if let Some(description) = property.get("description").and_then(Value::as_str) {
                lines.push(format!(
                    "{pad}/** {} */",
                    description.replace("*/", "* /").replace('\n', " ")
                ));
            }
            lines.push(format!(
                "{pad}{}{optional}: {};",
                ts_property(name),
                ts_type(property, indent + 1)
            ));
        }
    }
    match object.get("additionalProperties") {
        Some(Value::Bool(false)) | None if !lines.is_empty() => {}
        Some(Value::Bool(false)) => return "Record<string, never>".into(),
        Some(Value::Object(extra)) => {
            lines.push(format!(
                "{pad}[key: string]: {};",
                ts_type(&Value::Object(extra.clone()), indent + 1)
            ));
        }
        _ => lines.push(format!("{pad}[key: string]: unknown;")),
    }
    format!("{{\n{}\n{}}}", lines.join("\n"), "  ".repeat(indent))
}

fn is_current(schema: &Value) -> bool {
    schema.get("x-current") != Some(&Value::Bool(false))
}

/// TypeScript declarations for every schema of the contracts, at current versions.
pub fn typescript(openapi: &Value, asyncapi: &Value) -> String {
    let mut schemas = Map::new();
    for document in [openapi, asyncapi] {
        if let Some(found) = document
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        {
            // Older payload versions are for reading stored events, not for clients:
            // every API and feed serves the current version.
            for (name, schema) in found.iter().filter(|(_, schema)| is_current(schema)) {
                schemas
                    .entry(name.clone())
                    .or_insert_with(|| schema.clone());
            }
        }
    }
    let mut out = String::from(
        "// Generated by `cairn contracts export` from the OpenAPI and AsyncAPI documents.\n\
         // Do not edit: change the Rust types and export again.\n",
    );
    for (name, schema) in &schemas {
        out.push('\n');
        if let Some(description) = schema.get("description").and_then(Value::as_str) {
            out.push_str(&format!(
                "/** {} */\n",
                description.replace("*/", "* /").replace('\n', " ")
            ));
        }
        out.push_str(&format!(
            "export type {} = {};\n",
            ts_name(name),
            ts_type(schema, 0)
        ));
    }
    if let Some(messages) = asyncapi
        .pointer("/components/messages")
        .and_then(Value::as_object)
    {
        out.push_str("\n/** Every event type, by name, with its payload type. */\nexport interface EventPayloads {\n");
        for (name, message) in messages.iter().filter(|(_, message)| is_current(message)) {
            let payload = message
                .pointer("/payload/properties/event_data/$ref")
                .and_then(Value::as_str)
                .map_or_else(|| "unknown".to_owned(), ts_name);
            out.push_str(&format!("  {name:?}: {payload};\n"));
        }
        out.push_str("}\n");
    }
    out
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// The files `cairn contracts export` writes, by path relative to its directory.
pub fn files(openapi: &Value, asyncapi: &Value, registry: &Registry) -> Vec<(PathBuf, String)> {
    let mut files = vec![
        (PathBuf::from("openapi.json"), pretty(openapi)),
        (PathBuf::from("asyncapi.json"), pretty(asyncapi)),
        (
            PathBuf::from("typescript/cairn.ts"),
            typescript(openapi, asyncapi),
        ),
    ];
    for spec in registry.specs() {
        // `<type>.json` is the current version; `<type>.v<N>.json` each version,
        // the current one included, so that a consumer pinned to a version keeps it.
        let versions = spec
            .upcasters
            .iter()
            .map(|upcaster| (upcaster.from, upcaster.schema(), false))
            .chain([(spec.version, spec.schema.clone(), true)]);
        for (version, mut schema, current) in versions {
            let description = if current {
                format!("{} (version {version})", spec.description)
            } else {
                format!(
                    "{} Version {version} as earlier releases stored it; readers get it upcast \
                     to version {}.",
                    spec.description, spec.version
                )
            };
            let mut files_of = vec![format!("{}.v{version}.json", spec.event_type)];
            if current {
                files_of.insert(0, format!("{}.json", spec.event_type));
            }
            for file in files_of {
                if let Some(object) = schema.as_object_mut() {
                    object.insert(
                        "$id".into(),
                        json!(format!("https://cairn.dev/schemas/events/{file}")),
                    );
                    object.insert("description".into(), json!(description));
                    object.insert("x-event-version".into(), json!(version));
                }
                files.push((
                    PathBuf::from(format!("schemas/events/{file}")),
                    pretty(&schema),
                ));
            }
        }
    }
    files
}

/// Writes the contracts under `dir`, replacing what was there.
pub fn export(
    dir: &Path,
    openapi: &Value,
    asyncapi: &Value,
    registry: &Registry,
) -> std::io::Result<Vec<PathBuf>> {
    let events = dir.join("schemas/events");
    if events.exists() {
        std::fs::remove_dir_all(&events)?;
    }
    let mut written = Vec::new();
    for (path, text) in files(openapi, asyncapi, registry) {
        let full = dir.join(&path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&full, text)?;
        written.push(full);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typescript_renders_the_common_shapes() {
        let schema = json!({
            "type": "object",
            "required": ["id", "roles"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "roles": {"type": "array", "items": {"$ref": "#/components/schemas/Role"}},
                "note": {"type": ["string", "null"]},
                "kind": {"const": "user"}
            },
            "additionalProperties": false
        });
        let rendered = ts_type(&schema, 0);
        assert_eq!(
            rendered,
            "{\n  id: string;\n  kind?: \"user\";\n  note?: string | null;\n  roles: Array<Role>;\n}"
        );
        assert_eq!(ts_type(&json!({"enum": ["a", "b"]}), 0), "\"a\" | \"b\"");
        assert_eq!(ts_type(&json!(true), 0), "unknown");
    }
}
