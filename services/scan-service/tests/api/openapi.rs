//! `/openapi.json`: the document describes the scan route as it answers.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestEnv, header};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The keys of a JSON object, sorted.
fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_answer_of_the_scan_route_as_given() -> TestResult {
    let env = TestEnv::new().await;
    let app = env
        .spawn(&[
            ("RATE_LIMIT_IP_PER_MINUTE", "60"),
            ("RATE_LIMIT_IP_BURST", "4"),
        ])
        .await;
    let r = app.client.get(app.url("/openapi.json")).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let doc: Value = r.json().await?;
    let schemas = &doc["components"]["schemas"];
    let schema = |name: &str| -> &Value { &schemas[name] };
    let mut found = Vec::new();
    refs(&doc, &mut found);
    for r in &found {
        let name = r
            .strip_prefix("#/components/schemas/")
            .ok_or(format!("{r}: not a schema reference"))?;
        assert!(schema(name).is_object(), "{r} is defined");
    }

    let scan = &doc["paths"]["/v1/scan/{tag_id}"]["get"];
    let tag_param = scan["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "tag_id"))
        .ok_or("tag_id parameter")?;
    assert_eq!(tag_param["schema"]["pattern"], "^[A-Za-z0-9_-]{16,64}$");
    let responses = &scan["responses"];
    assert_eq!(
        keys(responses),
        ["200", "400", "401", "404", "429", "503"]
            .map(String::from)
            .into()
    );
    for (status, response) in responses.as_object().ok_or("responses")? {
        let mut expected: BTreeSet<String> = [
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
            "X-Request-ID",
        ]
        .map(String::from)
        .into();
        if status == "429" || status == "503" {
            expected.insert("Retry-After".to_owned());
        }
        assert_eq!(keys(&response["headers"]), expected, "{status}");
    }
    let body_schema = |status: &str| -> Result<&Value, String> {
        let r = responses[status]["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .ok_or(format!("{status}: no body schema"))?;
        Ok(schema(r.trim_start_matches("#/components/schemas/")))
    };

    // Each documented body has exactly the keys of the real answer, all of them required.
    let tag = env.tag().await;
    let (_, key) = env.api_key(None).await;
    let (revoked_id, revoked) = env.api_key(None).await;
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
        .bind(revoked_id)
        .execute(env.pool())
        .await?;
    let answers = [
        ("200", app.scan_with_key(&tag, &key).await),
        ("404", app.scan_with_key("NoSuchTag_0123456789", &key).await),
        ("401", app.scan_with_key(&tag, &revoked).await),
        ("400", app.scan("bad").await),
    ];
    for (status, r) in answers {
        assert_eq!(r.status().as_str(), status);
        let body: Value = r.json().await?;
        let documented = body_schema(status)?;
        assert_eq!(keys(&documented["properties"]), keys(&body), "{status}");
        let required: BTreeSet<String> = documented["required"]
            .as_array()
            .ok_or(format!("{status}: required"))?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        assert_eq!(required, keys(&body), "{status}: every key is always there");
        if status == "200" {
            assert_eq!(
                keys(&schema("Product")["properties"]),
                keys(&body["product"])
            );
            let statuses = &schema("TagStatus")["enum"];
            assert!(
                statuses
                    .as_array()
                    .is_some_and(|s| s.contains(&body["status"]))
            );
        }
    }
    // The anonymous bucket of 4 had two of those (the 401 is charged to the address): two more
    // pass, then 429 (a few more tries in case a token refilled meanwhile).
    let mut limited = None;
    for _ in 0..6 {
        let r = app.scan(&tag).await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r.json::<Value>().await?);
            break;
        }
    }
    let limited = limited.ok_or("no 429 within the bucket")?;
    assert_eq!(keys(&body_schema("429")?["properties"]), keys(&limited));
    Ok(())
}
