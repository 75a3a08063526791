//! `GET /v1/rules` and `PUT /v1/rules` (scope `admin`): the rule set in force, and
//! replacing it at run time with optimistic concurrency.
//!
//! A rule set has a version (0 for the configured defaults, one more per change), sent as
//! the strong entity tag `"<version>"`. `PUT` must send it back in `If-Match` (428
//! without it): the set is stored only if it is still the one in force (else 412), so two
//! admins never overwrite each other unseen. A `PUT` goes through, in order:
//! authentication (401/403), `If-Match` present (428), media type JSON (415), body size
//! (413), JSON syntax (400), the shape of every rule and [`fraud_config::rule_problems`]
//! (422 listing every error, with a JSON pointer into the body each), then the store
//! (412 on a version conflict). A rejected request changes nothing. Every instance
//! applies a stored set within [`crate::rules::REFRESH`] ([`crate::rules::RuleStore`]).
//!
//! The rules' JSON is their configuration's shape: `{id, severity, enabled, condition:
//! {kind, ...}}` with money in minor units, as in `serving.rules`.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fraud_config::{RuleCondition, RuleDefinition, Scope, Severity};
use fraud_service::problem::{FieldError, Problem};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::AppState;
use crate::rules::{RuleSet, StoreError};

/// The largest `PUT /v1/rules` body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The routes of this part of the API.
pub fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/rules", get(get_rules).put(put_rules))
        .with_state(state)
}

/// A rule set as answered.
#[derive(Debug, Serialize)]
struct RulesBody<'a> {
    version: i64,
    rules: &'a [RuleDefinition],
}

fn answer(set: &RuleSet) -> Response {
    let body = RulesBody {
        version: set.version,
        rules: &set.rules,
    };
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&etag(set.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The entity tag of `version`.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

async fn get_rules(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(problem) = state.keys.authorize(&headers, Scope::Admin) {
        return problem.into_response();
    }
    // The latest stored set; the one last read if Postgres does not answer.
    let set = match state.rules.refresh().await {
        Ok(set) => set,
        Err(error) => {
            tracing::warn!(%error, "could not read the rule set; answering the last one read");
            state.rules.current()
        }
    };
    answer(&set)
}

async fn put_rules(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    match replace(&state, &headers, body).await {
        Ok(set) => answer(&set),
        Err(problem) => problem.into_response(),
    }
}

async fn replace(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Arc<RuleSet>, Problem> {
    let caller = state.keys.authorize(headers, Scope::Admin)?;
    let expected = if_match(headers)?;
    require_json(headers)?;
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|error| Problem::malformed(format!("the body is not JSON: {error}")))?;
    let rules = parse_rule_set(&value).map_err(Problem::invalid)?;
    match state
        .rules
        .replace(expected, &rules, &caller.key_name)
        .await
    {
        Ok(set) => {
            tracing::info!(
                version = set.version,
                by = %caller.key_name,
                rules = set.rules.len(),
                "rule set replaced"
            );
            Ok(set)
        }
        Err(StoreError::Conflict(conflict)) => Err(Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "version-conflict",
            "Rule set version conflict",
        )
        .with_detail(format!(
            "{conflict}: read it again (GET /v1/rules, ETag {}) and apply your change to it",
            etag(conflict.current)
        ))),
        Err(StoreError::Postgres(error)) => {
            tracing::error!(error = %error, "could not store a rule set");
            Err(Problem::unavailable(
                "the rule store is unavailable; retry later",
                1,
            ))
        }
    }
}

/// The version `If-Match` names: 428 without the header (or with `*`, which would
/// overwrite unseen changes), 412 when it is not one strong tag `"<version>"` (a tag
/// that cannot be a current version never matches).
fn if_match(headers: &HeaderMap) -> Result<i64, Problem> {
    let required = || {
        Problem::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition-required",
            "If-Match required",
        )
        .with_detail(
            "send `If-Match: \"<version>\"` with the ETag of GET /v1/rules, so that changes \
             made meanwhile are not overwritten",
        )
    };
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Err(required());
    };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return Err(required());
    }
    text.strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<i64>().ok())
        .ok_or_else(|| {
            Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "version-conflict",
                "Rule set version conflict",
            )
            .with_detail(format!(
                "If-Match `{text}` is not the ETag of a rule set; send the ETag of \
                 GET /v1/rules, e.g. `\"3\"`"
            ))
        })
}

fn require_json(headers: &HeaderMap) -> Result<(), Problem> {
    let media_type = Problem::media_type(headers);
    match media_type.as_deref() {
        Some("application/json") => Ok(()),
        Some(other) => Err(Problem::unsupported_media_type(format!(
            "`{other}` is not accepted; send application/json"
        ))),
        None => Err(Problem::unsupported_media_type(
            "no Content-Type; send application/json",
        )),
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, Problem> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|error| Problem::malformed(format!("the body could not be read: {error}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(Problem::too_large(format!(
                "the body exceeds {limit} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn field_error(pointer: String, detail: impl Into<String>) -> FieldError {
    FieldError {
        index: None,
        pointer,
        detail: detail.into(),
    }
}

/// The rule set of a `PUT` body `{"rules": [...]}`, or every error in it.
pub fn parse_rule_set(body: &Value) -> Result<Vec<RuleDefinition>, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(object) = body.as_object() else {
        return Err(vec![field_error(
            String::new(),
            "must be an object `{\"rules\": [...]}`",
        )]);
    };
    for key in object.keys().filter(|key| key.as_str() != "rules") {
        errors.push(field_error(
            format!("/{}", escape(key)),
            "unknown field; the body is `{\"rules\": [...]}`",
        ));
    }
    let items = match object.get("rules") {
        None => {
            errors.push(field_error("/rules".into(), "is required"));
            return Err(errors);
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            errors.push(field_error("/rules".into(), "must be an array of rules"));
            return Err(errors);
        }
    };
    // Rules that parsed, with their index in the body.
    let mut parsed: Vec<(usize, RuleDefinition)> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        if let Some(rule) = parse_rule(index, item, &mut errors) {
            parsed.push((index, rule));
        }
    }
    let rules: Vec<RuleDefinition> = parsed.iter().map(|(_, rule)| rule.clone()).collect();
    for (pointer, reason) in fraud_config::rule_problems(&rules) {
        // `/<position among the parsed>/<field>` → `/rules/<index in the body>/<field>`.
        let mut parts = pointer.trim_start_matches('/').splitn(2, '/');
        let position = parts.next().and_then(|part| part.parse::<usize>().ok());
        let rest = parts.next().unwrap_or("");
        let index = position
            .and_then(|position| parsed.get(position))
            .map(|(index, _)| *index);
        let pointer = match index {
            Some(index) if rest.is_empty() => format!("/rules/{index}"),
            Some(index) => format!("/rules/{index}/{rest}"),
            None => format!("/rules{pointer}"),
        };
        errors.push(field_error(pointer, reason));
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        errors.sort_by(|a, b| a.pointer.cmp(&b.pointer));
        Err(errors)
    }
}

const RULE_FIELDS: [&str; 4] = ["id", "severity", "enabled", "condition"];

/// One rule of the body, each of its errors added to `errors`.
fn parse_rule(index: usize, item: &Value, errors: &mut Vec<FieldError>) -> Option<RuleDefinition> {
    let at = |field: &str| format!("/rules/{index}/{field}");
    let Some(object) = item.as_object() else {
        errors.push(field_error(
            format!("/rules/{index}"),
            "must be an object {id, severity, enabled, condition}",
        ));
        return None;
    };
    let before = errors.len();
    for key in object
        .keys()
        .filter(|key| !RULE_FIELDS.contains(&key.as_str()))
    {
        errors.push(field_error(
            at(&escape(key)),
            "unknown field; a rule has id, severity, enabled and condition",
        ));
    }
    let id = match object.get("id") {
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => {
            errors.push(field_error(at("id"), "must be a string"));
            None
        }
        None => {
            errors.push(field_error(at("id"), "is required"));
            None
        }
    };
    let severity = match object.get("severity") {
        Some(value) => serde_json::from_value::<Severity>(value.clone())
            .map_err(|_| {
                errors.push(field_error(
                    at("severity"),
                    "must be one of low, medium, high, critical",
                ))
            })
            .ok(),
        None => {
            errors.push(field_error(at("severity"), "is required"));
            None
        }
    };
    let enabled = match object.get("enabled") {
        None => Some(true),
        Some(Value::Bool(enabled)) => Some(*enabled),
        Some(_) => {
            errors.push(field_error(at("enabled"), "must be true or false"));
            None
        }
    };
    let condition = match object.get("condition") {
        Some(value) => parse_condition(value, &at("condition"), errors),
        None => {
            errors.push(field_error(at("condition"), "is required"));
            None
        }
    };
    if errors.len() > before {
        return None;
    }
    Some(RuleDefinition {
        id: id?,
        severity: severity?,
        enabled: enabled?,
        condition: condition?,
    })
}

/// The condition's fields, by kind: each must be an integer.
const KINDS: [(&str, &[&str]); 4] = [
    ("window_sum_over", &["limit_minor"]),
    ("window_count_over", &["limit"]),
    (
        "window_sum_over_baseline_peak",
        &["multiple_percent", "min_sum_minor"],
    ),
    ("new_vendor_amount_over", &["limit_minor"]),
];

fn parse_condition(value: &Value, at: &str, errors: &mut Vec<FieldError>) -> Option<RuleCondition> {
    let Some(object) = value.as_object() else {
        errors.push(field_error(at.to_owned(), "must be an object {kind, ...}"));
        return None;
    };
    let kinds = KINDS.map(|(kind, _)| kind).join(", ");
    let fields = match object.get("kind") {
        Some(Value::String(kind)) => match KINDS.iter().find(|(name, _)| name == kind) {
            Some((_, fields)) => *fields,
            None => {
                errors.push(field_error(
                    format!("{at}/kind"),
                    format!("must be one of {kinds}"),
                ));
                return None;
            }
        },
        Some(_) => {
            errors.push(field_error(
                format!("{at}/kind"),
                format!("must be one of {kinds}"),
            ));
            return None;
        }
        None => {
            errors.push(field_error(format!("{at}/kind"), "is required"));
            return None;
        }
    };
    let before = errors.len();
    let expected: BTreeSet<&str> = fields.iter().copied().chain(["kind"]).collect();
    for key in object.keys().filter(|key| !expected.contains(key.as_str())) {
        errors.push(field_error(
            format!("{at}/{}", escape(key)),
            format!("unknown field; this kind has {}", fields.join(", ")),
        ));
    }
    // The condition with each integer as an integer literal (`17016.0` becomes `17016`).
    let mut normalised = object.clone();
    for field in fields {
        match object.get(*field).map(exact_integer) {
            Some(Some(integer)) => {
                normalised.insert((*field).to_owned(), Value::from(integer));
            }
            Some(None) => errors.push(field_error(
                format!("{at}/{field}"),
                "must be an integer (money in minor units)",
            )),
            None => errors.push(field_error(format!("{at}/{field}"), "is required")),
        }
    }
    if errors.len() > before {
        return None;
    }
    match serde_json::from_value::<RuleCondition>(Value::Object(normalised)) {
        Ok(condition) => Some(condition),
        Err(error) => {
            errors.push(field_error(at.to_owned(), error.to_string()));
            None
        }
    }
}

/// The integer `value` is, as JSON Schema counts integers: an integer literal, or a
/// number with a zero fraction (`17016.0`) when its float is exact (below 2^53), so
/// that no digit is lost on the way.
fn exact_integer(value: &Value) -> Option<i64> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    value.as_i64().or_else(|| {
        let float = value.as_f64()?;
        // In range and whole, so the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        (float.fract() == 0.0 && float.abs() < EXACT).then_some(float as i64)
    })
}

/// A key as a JSON Pointer reference token (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pointers(body: Value) -> Vec<(String, String)> {
        parse_rule_set(&body)
            .unwrap_err()
            .into_iter()
            .map(|error| (error.pointer, error.detail))
            .collect()
    }

    #[test]
    fn a_valid_set_parses_as_its_configuration_shape() {
        let body = json!({"rules": [
            {"id": "a", "severity": "high", "condition": {"kind": "window_sum_over", "limit_minor": 5}},
            {"id": "b", "severity": "low", "enabled": false,
             "condition": {"kind": "window_sum_over_baseline_peak", "multiple_percent": 300, "min_sum_minor": 0}},
        ]});
        let rules = parse_rule_set(&body).unwrap();
        assert_eq!(rules.len(), 2);
        assert!(rules[0].enabled);
        assert!(!rules[1].enabled);
        // Serialized back, it is the body (with `enabled` explicit).
        let back = serde_json::to_value(&rules).unwrap();
        assert_eq!(back[0]["condition"], body["rules"][0]["condition"]);
        assert_eq!(back[1], body["rules"][1]);
        assert_eq!(back[0]["enabled"], true);
    }

    #[test]
    fn every_error_is_listed_with_its_pointer() {
        let errors = pointers(json!({"extra": 1, "rules": [
            {"id": "Bad Id", "severity": "high", "condition": {"kind": "window_sum_over", "limit_minor": 0}},
            {"id": "dup", "severity": "urgent", "enabled": "yes", "colour": "red",
             "condition": {"kind": "nope"}},
            {"id": "dup", "severity": "low", "condition": {"kind": "window_count_over", "limit": 3}},
            {"id": "dup", "severity": "low", "condition": {"kind": "window_count_over"}},
            {"id": "x", "severity": "low", "condition": {"kind": "window_count_over", "limit": 1.5, "max": 2}},
            7,
        ]}));
        let only: Vec<&str> = errors.iter().map(|(pointer, _)| pointer.as_str()).collect();
        assert_eq!(
            only,
            vec![
                "/extra",
                "/rules/0/condition/limit_minor",
                "/rules/0/id",
                "/rules/1/colour",
                "/rules/1/condition/kind",
                "/rules/1/enabled",
                "/rules/1/severity",
                "/rules/3/condition/limit",
                "/rules/4/condition/limit",
                "/rules/4/condition/max",
                "/rules/5",
            ],
            "{errors:?}"
        );
    }

    #[test]
    fn a_whole_number_with_a_zero_fraction_is_an_integer_as_json_schema_says() {
        let body = json!({"rules": [
            {"id": "a", "severity": "high", "condition": {"kind": "window_sum_over", "limit_minor": 17016.0}},
        ]});
        let rules = parse_rule_set(&body).unwrap();
        let back = serde_json::to_value(&rules).unwrap();
        assert_eq!(back[0]["condition"]["limit_minor"], json!(17016));
        // Beyond 2^53 a float may have lost digits: not taken as an integer.
        let errors = pointers(json!({"rules": [
            {"id": "a", "severity": "high", "condition": {"kind": "window_sum_over", "limit_minor": 1e17}},
        ]}));
        assert_eq!(errors[0].0, "/rules/0/condition/limit_minor", "{errors:?}");
    }

    #[test]
    fn duplicates_point_at_the_body_index() {
        let errors = pointers(json!({"rules": [
            {"id": "a", "severity": "high", "condition": {"kind": "nope"}},
            {"id": "b", "severity": "high", "condition": {"kind": "window_count_over", "limit": 1}},
            {"id": "b", "severity": "high", "condition": {"kind": "window_count_over", "limit": 1}},
        ]}));
        assert_eq!(errors[1].0, "/rules/2/id", "{errors:?}");
        assert!(errors[1].1.contains("`b` is used by another rule"));
    }

    #[test]
    fn if_match_needs_one_strong_version() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_MATCH, HeaderValue::from_str(value).unwrap());
            if_match(&headers).map_err(|problem| problem.status)
        };
        assert_eq!(if_match(&HeaderMap::new()).unwrap_err().status, 428);
        assert_eq!(with("*"), Err(428));
        assert_eq!(with("\"7\""), Ok(7));
        assert_eq!(with("7"), Err(412));
        assert_eq!(with("W/\"7\""), Err(412));
        assert_eq!(with("\"x\""), Err(412));
    }
}
