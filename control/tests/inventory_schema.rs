//! The published JSON Schema of the inventory (docs/inventory.schema.json) and the parser
//! agree: the repository's example inventories (TOML and YAML) pass both; an inventory with
//! every field set passes both, and its fields are exactly the schema's properties (so a
//! field added to one and not the other fails here); broken inventories fail both.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use control::inventory::{Format, Inventory};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schema() -> Value {
    let text = std::fs::read_to_string(repo().join("docs/inventory.schema.json"))
        .expect("read docs/inventory.schema.json");
    serde_json::from_str(&text).expect("the schema is JSON")
}

/// The inventory text as the JSON value the schema describes.
fn as_json(text: &str, format: Format) -> Value {
    match format {
        Format::Toml => toml::from_str(text).expect("TOML"),
        Format::Yaml => yaml_serde::from_str(text).expect("YAML"),
    }
}

/// Schema errors for `text` (empty when valid).
fn schema_errors(validator: &jsonschema::Validator, text: &str, format: Format) -> Vec<String> {
    validator
        .iter_errors(&as_json(text, format))
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect()
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("a valid JSON Schema")
}

/// Every field of every section set.
const FULL_TOML: &str = r#"
[cluster]
secret_file = "s"
heartbeat_ms = 10
suspect_ms = 20
dead_ms = 30
api_token_file = "t"
api_read_auth = true
frame_auth = "aead"

[tls]
ca = "ca.pem"

[[node]]
id = 63
host = "h"
listen = "10.0.0.1:1"
control = "10.0.0.1:2"
api = "[::1]:3"
memory = "1G"
cores = "2-5,8"
idle = "hybrid:20"
cert = "c.pem"
key = "c.key"
"#;

#[test]
fn examples_pass_the_schema_and_the_parser() {
    let v = validator();
    let mut seen = 0;
    for entry in std::fs::read_dir(repo().join("examples")).expect("examples/") {
        let path = entry.expect("dir entry").path();
        let Ok(format) = Format::of(&path) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("read example");
        let errors = schema_errors(&v, &text, format);
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        Inventory::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
        seen += 1;
    }
    assert!(
        seen >= 2,
        "expected a TOML and a YAML example, found {seen} inventories"
    );
}

#[test]
fn schema_properties_are_exactly_the_parsers_fields() {
    let v = validator();
    let errors = schema_errors(&v, FULL_TOML, Format::Toml);
    assert!(errors.is_empty(), "{errors:?}");
    Inventory::parse(FULL_TOML, Path::new("/x/full.toml")).unwrap_or_else(|e| panic!("{e}"));
    let full = as_json(FULL_TOML, Format::Toml);
    let s = schema();
    let keys = |o: &Value| -> BTreeSet<String> {
        o.as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    let props = |p: &Value| keys(&p["properties"]);
    assert_eq!(keys(&full), props(&s));
    for section in ["cluster", "tls"] {
        assert_eq!(
            keys(&full[section]),
            props(&s["properties"][section]),
            "{section}"
        );
    }
    assert_eq!(
        keys(&full["node"][0]),
        props(&s["properties"]["node"]["items"]),
        "node"
    );
}

#[test]
fn broken_inventories_fail_the_schema_and_the_parser() {
    let v = validator();
    let cases = [
        FULL_TOML.replace("id = 63", "id = 64"),
        FULL_TOML.replace("frame_auth = \"aead\"", "frame_auth = \"rot13\""),
        FULL_TOML.replace("idle = \"hybrid:20\"", "idle = \"nap\""),
        FULL_TOML.replace("api_read_auth = true", "api_read_auth = true\ncolour = 1"),
        FULL_TOML.replace("listen = \"10.0.0.1:1\"\n", ""),
        FULL_TOML.replace("\"10.0.0.1:2\"", "\"10.0.0.1\""),
        FULL_TOML.replace("[tls]\nca = \"ca.pem\"", ""),
    ];
    for text in cases {
        assert!(
            !schema_errors(&v, &text, Format::Toml).is_empty(),
            "the schema accepts:\n{text}"
        );
        assert!(
            Inventory::parse(&text, Path::new("/x/bad.toml")).is_err(),
            "the parser accepts:\n{text}"
        );
    }
}
