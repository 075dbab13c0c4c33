//! Helpers the document's unit tests share.

use super::DOCUMENT;

pub(super) fn doc() -> serde_json::Value {
    serde_json::to_value(&*DOCUMENT).unwrap()
}

/// Every described operation as (path, method, operation).
pub(super) fn each_operation(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            found.push((path.clone(), method.clone(), operation.clone()));
        }
    }
    assert!(found.len() >= 15, "{}", found.len());
    found
}

pub(super) fn idempotent(path: &str, method: &str) -> bool {
    matches!(method, "post" | "delete") && !path.starts_with("/v1/auth/")
}

pub(super) fn nullable(schema: &serde_json::Value) -> bool {
    schema["type"]
        .as_array()
        .is_some_and(|t| t.contains(&"null".into()))
        || schema["oneOf"]
            .as_array()
            .is_some_and(|o| o.iter().any(|s| s["type"] == "null"))
}

pub(super) fn required(schema: &serde_json::Value) -> Vec<&str> {
    schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default()
}

pub(super) fn body_ref(response: &serde_json::Value) -> &str {
    response["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap_or_default()
}

pub(super) fn parameter<'a>(operation: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    operation["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}
