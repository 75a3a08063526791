//! The serving API's OpenAPI 3.1 document, `GET /openapi.json`.
//!
//! Each part of the API keeps its own fragment in `services/serving-api/openapi/`
//! (`paths` and `components.schemas`); the document is their union over `base.json`,
//! so parts are described next to each other without sharing one file. A test keeps the
//! document and the routes in step.

use axum::Router;
use axum::routing::get;
use serde_json::{Map, Value};

const BASE: &str = include_str!("../openapi/base.json");
const FRAGMENTS: &[(&str, &str)] = &[
    ("risk.json", include_str!("../openapi/risk.json")),
    ("rules.json", include_str!("../openapi/rules.json")),
    ("alerts.json", include_str!("../openapi/alerts.json")),
];

/// The whole document.
pub fn document() -> Value {
    let mut document: Value = serde_json::from_str(BASE).expect("openapi/base.json is JSON");
    for (name, fragment) in FRAGMENTS {
        let fragment: Value = serde_json::from_str(fragment)
            .unwrap_or_else(|error| panic!("openapi/{name} is not JSON: {error}"));
        for section in ["paths", "components/schemas", "components/responses"] {
            let Some(Value::Object(entries)) = fragment.pointer(&format!("/{section}")) else {
                continue;
            };
            let target = section.split('/').fold(&mut document, |node, key| {
                node.as_object_mut()
                    .expect("an object")
                    .entry(key)
                    .or_insert_with(|| Value::Object(Map::new()))
            });
            let target = target.as_object_mut().expect("an object");
            for (key, value) in entries {
                assert!(
                    target.insert(key.clone(), value.clone()).is_none(),
                    "openapi/{name}: `{section}/{key}` is defined twice"
                );
            }
        }
    }
    document
}

/// `GET /openapi.json`.
pub fn routes() -> Router {
    let document = document();
    Router::new().route(
        "/openapi.json",
        get(move || {
            let document = document.clone();
            async move { axum::Json(document) }
        }),
    )
}
