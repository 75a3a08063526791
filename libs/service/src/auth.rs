//! API keys with scopes.
//!
//! Keys are configured as the SHA-256 of the key (never the key itself). A request's
//! `Authorization: Bearer <key>` is hashed and compared with every configured hash in
//! constant time, without stopping at a match, so timing reveals nothing about which
//! keys exist.

use axum::http::{HeaderMap, header};
use fraud_config::{AuthConfig, Scope};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::problem::Problem;

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's configured name (for logs, metrics and rate limits).
    pub key_name: String,
}

struct Key {
    name: String,
    sha256: [u8; 32],
    scopes: Vec<Scope>,
}

/// The configured keys.
pub struct ApiKeys {
    keys: Vec<Key>,
}

impl ApiKeys {
    /// The keys of `config` (already validated: 64 lowercase hex digits each).
    pub fn from_config(config: &AuthConfig) -> Self {
        let keys = config
            .keys
            .iter()
            .filter_map(|key| {
                let mut sha256 = [0_u8; 32];
                hex::decode_to_slice(&key.sha256, &mut sha256).ok()?;
                Some(Key {
                    name: key.name.clone(),
                    sha256,
                    scopes: key.scopes.clone(),
                })
            })
            .collect();
        Self { keys }
    }

    /// The caller behind `headers`, if its key is valid and has `scope`: 401 without a
    /// valid key, 403 with a valid key that lacks the scope.
    pub fn authorize(&self, headers: &HeaderMap, scope: Scope) -> Result<Caller, Problem> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(Problem::unauthorized(
                "send an API key as `Authorization: Bearer <key>`",
            ));
        };
        let presented = value
            .to_str()
            .ok()
            .and_then(|text| {
                let (scheme, token) = text.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                Problem::unauthorized("the Authorization header must be `Bearer <key>`")
            })?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found: Option<&Key> = None;
        for key in &self.keys {
            // Every key is compared; a match is remembered, not returned early.
            if bool::from(key.sha256.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        let key = found.ok_or_else(|| Problem::unauthorized("the API key is not valid"))?;
        if !key.scopes.contains(&scope) {
            return Err(Problem::forbidden(format!(
                "the API key `{}` lacks the `{}` scope",
                key.name,
                scope_name(scope)
            )));
        }
        Ok(Caller {
            key_name: key.name.clone(),
        })
    }
}

/// The scope's name as written in configuration.
pub fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Ingest => "ingest",
        Scope::Read => "read",
        Scope::Admin => "admin",
    }
}

/// The lowercase hex SHA-256 of `key`: what configuration stores for it.
pub fn key_sha256(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use fraud_config::ApiKeyConfig;

    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::from_config(&AuthConfig {
            keys: vec![
                ApiKeyConfig {
                    name: "writer".into(),
                    sha256: key_sha256("writer-secret"),
                    scopes: vec![Scope::Ingest],
                },
                ApiKeyConfig {
                    name: "reader".into(),
                    sha256: key_sha256("reader-secret"),
                    scopes: vec![Scope::Read],
                },
            ],
        })
    }

    fn bearer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn the_auth_matrix() {
        let keys = keys();
        let none = keys
            .authorize(&HeaderMap::new(), Scope::Ingest)
            .unwrap_err();
        assert_eq!(none.status, 401);
        let wrong = keys
            .authorize(&bearer("Bearer nope"), Scope::Ingest)
            .unwrap_err();
        assert_eq!(wrong.status, 401);
        let not_bearer = keys
            .authorize(&bearer("Basic abc"), Scope::Ingest)
            .unwrap_err();
        assert_eq!(not_bearer.status, 401);
        let wrong_scope = keys
            .authorize(&bearer("Bearer reader-secret"), Scope::Ingest)
            .unwrap_err();
        assert_eq!(wrong_scope.status, 403);
        assert!(wrong_scope.detail.unwrap().contains("`ingest`"));
        let caller = keys
            .authorize(&bearer("bearer writer-secret"), Scope::Ingest)
            .unwrap();
        assert_eq!(caller.key_name, "writer");
    }
}
