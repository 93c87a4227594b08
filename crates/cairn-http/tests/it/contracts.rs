//! The committed contracts under `contracts/` are exactly what the code generates:
//! a change to a payload, a route or a parameter is always a visible diff.

use std::path::Path;

#[test]
fn the_committed_contracts_match_the_code() {
    let registry = cairn_domain::registry();
    let (_, documented) = cairn_http::routes::api().finish();
    let openapi = cairn_http::api::openapi(&documented);
    let asyncapi = cairn_http::contracts::asyncapi(&registry);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contracts");
    let mut stale = Vec::new();
    for (path, generated) in cairn_http::contracts::files(&openapi, &asyncapi, &registry) {
        let committed = std::fs::read_to_string(root.join(&path)).unwrap_or_default();
        if committed != generated {
            stale.push(path.display().to_string());
        }
    }
    let on_disk = std::fs::read_dir(root.join("schemas/events"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    // `<type>.json` (current), and `<type>.v<N>.json` for each version it reads.
    let expected: usize = registry.specs().map(|spec| 2 + spec.upcasters.len()).sum();
    assert_eq!(
        on_disk, expected,
        "contracts/schemas/events has the current schema and one per version of each event type"
    );
    assert!(
        stale.is_empty(),
        "these contracts differ from the code: {stale:?}\nrun `cargo run -- contracts export --out contracts` and commit the diff"
    );
}

#[test]
fn every_version_of_a_payload_is_in_the_contracts_and_only_the_current_in_typescript() {
    let registry = cairn_domain::registry();
    let asyncapi = cairn_http::contracts::asyncapi(&registry);
    let (_, documented) = cairn_http::routes::api().finish();
    let openapi = cairn_http::api::openapi(&documented);
    let files = cairn_http::contracts::files(&openapi, &asyncapi, &registry);
    let file = |name: &str| -> serde_json::Value {
        let text = files
            .iter()
            .find(|(path, _)| path.ends_with(name))
            .map(|(_, text)| text.clone())
            .unwrap_or_else(|| panic!("no {name} among the contracts"));
        serde_json::from_str(&text).expect("JSON")
    };
    let v1 = file("user.invited.v1.json");
    let v2 = file("user.invited.v2.json");
    let v3 = file("user.invited.v3.json");
    assert_eq!(v1["x-event-version"], 1);
    assert!(v1["properties"].get("invited_by").is_none(), "{v1}");
    assert_eq!(v2["x-event-version"], 2);
    assert!(v2["properties"].get("invited_by").is_some(), "{v2}");
    assert_eq!(v2["properties"]["email"]["type"], "string", "{v2}");
    // Version 3: the name and address are personal, sealed in the log.
    assert_eq!(v3["x-event-version"], 3);
    assert_eq!(
        v3["properties"]["email"]["$ref"], "#/$defs/Personal_Email",
        "{v3}"
    );
    assert_eq!(file("user.invited.json")["properties"], v3["properties"]);

    let messages = &asyncapi["components"]["messages"];
    assert_eq!(messages["user.invited"]["x-event-version"], 3);
    assert_eq!(messages["user.invited.v1"]["x-current"], false);
    assert_eq!(
        messages["user.invited.v1"]["payload"]["properties"]["event_data"]["$ref"],
        "#/components/schemas/UserInvitedV1"
    );
    let typescript = cairn_http::contracts::typescript(&openapi, &asyncapi);
    assert!(typescript.contains("export type UserInvited ="));
    assert!(
        !typescript.contains("UserInvitedV1"),
        "old versions are not client types"
    );
}
