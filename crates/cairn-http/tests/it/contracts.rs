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
    assert_eq!(
        on_disk,
        registry.specs().count(),
        "contracts/schemas/events has one file per event type"
    );
    assert!(
        stale.is_empty(),
        "these contracts differ from the code: {stale:?}\nrun `cargo run -- contracts export --out contracts` and commit the diff"
    );
}
