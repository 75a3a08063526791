//! `/openapi.json` describes the API exactly as implemented: every documented operation
//! answers, every documented status of `POST /v1/transactions` is produced by some
//! request, and every answer's body validates against the schema documented for it.

mod common;

use std::collections::BTreeSet;

use common::{Harness, READER, WRITER, transaction};
use serde_json::{Value, json};

/// The JSON Schema documented for `status` of `POST /v1/transactions` in `content_type`.
fn documented_schema(spec: &Value, status: u16, content_type: &str) -> Value {
    let escaped = content_type.replace('/', "~1");
    let pointer =
        format!("#/paths/~1v1~1transactions/post/responses/{status}/content/{escaped}/schema");
    assert!(
        spec.pointer(&pointer[1..]).is_some(),
        "the spec documents no {content_type} body for {status}"
    );
    // The whole document is the schema resource, so `$ref`s into components resolve.
    let mut schema = spec.clone();
    schema["$ref"] = json!(pointer);
    schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    schema
}

#[tokio::test]
async fn the_document_matches_the_implementation() {
    let ingest = Harness::start(|settings| {
        settings.ingest.max_batch_items = 2;
        settings.ingest.rate_limit_per_second = 1;
        settings.ingest.rate_limit_burst = 1_000;
    })
    .await;
    let client = reqwest::Client::new();
    let spec: Value = client
        .get(format!("{}/openapi.json", ingest.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .expect("the document is JSON");
    // The document with this instance's limits (a batch of at most 2).
    let config = &ingest.settings.ingest;
    let expected = ingest::api::document(
        fraud_domain::Currency::parse(&config.currency).unwrap(),
        fraud_domain::Money::from_minor(config.max_amount_minor),
        2,
    );
    assert_eq!(spec, serde_json::from_str::<Value>(&expected).unwrap());
    assert_eq!(
        spec["components"]["schemas"]["Transaction"]["properties"]["currency"]["enum"],
        json!([config.currency, null])
    );

    // Every documented operation answers (not 404 or 405).
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            let request = client.request(
                method.to_uppercase().parse().unwrap(),
                format!("{}{path}", ingest.base),
            );
            let status = request.send().await.unwrap().status().as_u16();
            assert!(
                status != 404 && status != 405,
                "{method} {path} answered {status}"
            );
        }
    }

    // Requests that produce each status the spec documents.
    let valid = |id: &str| transaction(id, json!("c-1"), json!("1.50"));
    let cases: Vec<(Option<&str>, &str, String)> = vec![
        (Some(WRITER), "application/json", valid("doc-1").to_string()),
        (
            Some(WRITER),
            "application/json",
            json!([valid("doc-2"), valid("doc-3")]).to_string(),
        ),
        (Some(WRITER), "application/json", "{".to_owned()),
        (None, "application/json", valid("doc-4").to_string()),
        (Some(READER), "application/json", valid("doc-4").to_string()),
        (
            Some(WRITER),
            "application/json",
            transaction("doc-1", json!("c-1"), json!("9.99")).to_string(),
        ),
        (
            Some(WRITER),
            "application/json",
            json!([valid("a"), valid("b"), valid("c")]).to_string(),
        ),
        (Some(WRITER), "text/csv", "a,b".to_owned()),
        (
            Some(WRITER),
            "application/json",
            json!({"customerId": 1}).to_string(),
        ),
    ];
    let mut seen = BTreeSet::new();
    for (key, content_type, body) in cases {
        let mut request = client
            .post(format!("{}/v1/transactions", ingest.base))
            .header("content-type", content_type)
            .body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let answered_type = response
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = response.json().await.unwrap();
        let schema = documented_schema(&spec, status, &answered_type);
        let validator = jsonschema::validator_for(&schema).expect("a valid schema");
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{status} {body} does not match the spec: {errors:?}"
        );
        seen.insert(status);
    }
    // 429 and 503 need load; their bodies are the same Problem, produced in tests/api.rs.
    let documented: BTreeSet<u16> = spec["paths"]["/v1/transactions"]["post"]["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(|status| status.parse().unwrap())
        .filter(|status| *status != 429 && *status != 503)
        .collect();
    assert_eq!(
        seen, documented,
        "every documented status is produced, and only those"
    );
    ingest.stop().await;
}
