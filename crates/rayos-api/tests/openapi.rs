//! `docs/api/openapi.yaml` against the Rust types: every string enum the
//! API sends must list exactly the values the types put on the wire, in
//! the same order, so the document cannot drift from the code again.
//!
//! The YAML is read with a small indentation walk that knows just what the
//! OpenAPI file uses (block maps, flow lists that may span lines, block
//! lists); an unexpected shape fails the test with the path it looked for.

use std::path::Path;

use rayos_api::{AccelKind, BootKind, Button, EventKind, MediaAction, MediaForm, VmState};
use serde::Serialize;

fn openapi() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/openapi.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

/// The text after `key:` on its line plus the lines of its block, for the
/// key reached by following `path` from the top of the document.
fn lookup(text: &str, path: &[&str]) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let (mut from, mut to) = (0, lines.len());
    let mut value = String::new();
    for (depth, key) in path.iter().enumerate() {
        let want = format!("{key}:");
        // The block's own keys sit at the indentation of its first line.
        let level = (from..to)
            .map(|i| lines[i])
            .find(|l| is_content(l))
            .map(indent)
            .unwrap_or_else(|| panic!("{:?} has no block", &path[..depth]));
        let at = (from..to)
            .find(|&i| {
                let l = lines[i];
                indent(l) == level
                    && l.trim_start()
                        .strip_prefix(&want)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
            })
            .unwrap_or_else(|| panic!("openapi.yaml has no {:?}", &path[..=depth]));
        let end = (at + 1..to)
            .find(|&i| is_content(lines[i]) && indent(lines[i]) <= level)
            .unwrap_or(to);
        value = lines[at].trim_start()[want.len()..].trim().to_string();
        (from, to) = (at + 1, end);
    }
    for l in &lines[from..to] {
        value.push('\n');
        value.push_str(l);
    }
    value
}

/// The items of a flow list (`[a, b,\n c]`) or a block list (`- a`).
fn list(value: &str) -> Vec<String> {
    let v = value.trim();
    if let Some(inner) = v.strip_prefix('[') {
        let inner = inner
            .split_once(']')
            .unwrap_or_else(|| panic!("unclosed list: {v}"))
            .0;
        return inner
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    v.lines()
        .filter(|l| is_content(l))
        .map(|l| {
            let item = l.trim().strip_prefix("- ");
            let item = item.unwrap_or_else(|| panic!("not a list item: {l}"));
            item.split(" #").next().unwrap_or(item).trim().to_string()
        })
        .collect()
}

fn wire<T: Serialize>(all: &[T]) -> Vec<String> {
    all.iter()
        .map(|v| match serde_json::to_value(v) {
            Ok(serde_json::Value::String(s)) => s,
            other => panic!("not a string on the wire: {other:?}"),
        })
        .collect()
}

fn schema_enum(name: &str) -> Vec<String> {
    list(&lookup(
        &openapi(),
        &["components", "schemas", name, "enum"],
    ))
}

#[test]
fn event_kinds_match_the_openapi_enum() {
    assert_eq!(schema_enum("EventKind"), wire(EventKind::ALL));
    // The event's `event` property is that schema, not a free string.
    let prop = lookup(
        &openapi(),
        &["components", "schemas", "Event", "properties", "event"],
    );
    assert_eq!(
        prop.trim(),
        r##"{ $ref: "#/components/schemas/EventKind" }"##
    );
}

#[test]
fn vm_states_and_boot_kinds_match_the_openapi_enums() {
    assert_eq!(schema_enum("VmState"), wire(VmState::ALL));
    assert_eq!(schema_enum("BootKind"), wire(BootKind::ALL));
}

#[test]
fn agent_bridge_enums_match_the_openapi_file() {
    assert_eq!(schema_enum("Button"), wire(Button::ALL));
    // Every action type the daemon accepts is listed, in order.
    let types = list(&lookup(
        &openapi(),
        &[
            "components",
            "schemas",
            "InputAction",
            "properties",
            "type",
            "enum",
        ],
    ));
    let wire_types: Vec<String> = [
        rayos_api::InputAction::Key { keys: "a".into() },
        rayos_api::InputAction::Text { text: "a".into() },
        rayos_api::InputAction::Move { x: 0, y: 0 },
        rayos_api::InputAction::Click {
            x: 0,
            y: 0,
            button: Button::Left,
        },
    ]
    .iter()
    .map(|a| {
        serde_json::to_value(a).unwrap()["type"]
            .as_str()
            .unwrap()
            .to_string()
    })
    .collect();
    assert_eq!(types, wire_types);
}

#[test]
fn accelerators_match_the_openapi_enum_and_are_reported() {
    assert_eq!(schema_enum("AccelKind"), wire(AccelKind::ALL));
    let accel = r##"{ $ref: "#/components/schemas/AccelKind" }"##;
    let prop = lookup(
        &openapi(),
        &[
            "components",
            "schemas",
            "Accelerator",
            "properties",
            "accel",
        ],
    );
    assert_eq!(prop.trim(), accel);
    // Health and every VM object carry one.
    for schema in ["Health", "VmInfo"] {
        let p = lookup(
            &openapi(),
            &[
                "components",
                "schemas",
                schema,
                "properties",
                "accel",
                "allOf",
            ],
        );
        assert_eq!(
            p.trim(),
            r##"[{ $ref: "#/components/schemas/Accelerator" }]"##,
            "{schema}"
        );
    }
}

#[test]
fn media_request_enums_match_the_openapi_enums() {
    assert_eq!(schema_enum("MediaForm"), wire(MediaForm::ALL));
    assert_eq!(schema_enum("MediaAction"), wire(MediaAction::ALL));
    // The request's fields are those schemas, under their wire names.
    let props = lookup(
        &openapi(),
        &["components", "schemas", "MediaRequest", "properties"],
    );
    assert!(
        props.contains(r##"as: { $ref: "#/components/schemas/MediaForm" }"##),
        "{props}"
    );
    let req: rayos_api::MediaRequest =
        serde_json::from_str(r#"{"action": "attach", "source": "/x.iso", "as": "usb"}"#).unwrap();
    assert_eq!(req.form, Some(MediaForm::Usb));
}

#[test]
fn as_str_is_the_wire_string_and_parses_back() {
    fn check<T>(all: &[T], as_str: fn(&T) -> &'static str)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        for (v, w) in all.iter().zip(wire(all)) {
            assert_eq!(as_str(v), w);
            let back: T = serde_json::from_value(serde_json::Value::String(w)).unwrap();
            assert_eq!(&back, v);
        }
        let mut seen = wire(all);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), all.len(), "wire strings are distinct");
    }
    check(EventKind::ALL, |k| k.as_str());
    check(VmState::ALL, |s| s.as_str());
    check(BootKind::ALL, |b| b.as_str());
    check(AccelKind::ALL, |a| a.as_str());
    check(Button::ALL, |b| b.as_str());
    check(MediaForm::ALL, |b| b.as_str());
    check(MediaAction::ALL, |b| b.as_str());
}

#[test]
fn an_unknown_event_kind_is_a_decode_error() {
    let line = r#"{"seq":1,"time_ms":0,"vm":"a","event":"exploded","state":"running"}"#;
    let e = serde_json::from_str::<rayos_api::Event>(line).unwrap_err();
    assert!(e.to_string().contains("exploded"), "{e}");
}

/// The walk itself: it must find the enums where they are and refuse to
/// guess when the path is wrong, or the checks above would prove nothing.
#[test]
fn the_yaml_walk_reads_both_list_styles_and_nested_keys() {
    let doc = "a:\n  b:\n    x: [p, q,\n      r]\n    y:\n      - s  # note\n      - t\n  c: 1\n";
    assert_eq!(list(&lookup(doc, &["a", "b", "x"])), ["p", "q", "r"]);
    assert_eq!(list(&lookup(doc, &["a", "b", "y"])), ["s", "t"]);
    assert_eq!(lookup(doc, &["a", "c"]).trim(), "1");
    let missing = std::panic::catch_unwind(|| lookup(doc, &["a", "x"]));
    assert!(missing.is_err(), "x is not a direct child of a");
}
