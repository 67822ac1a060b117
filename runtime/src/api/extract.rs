//! Extractors that answer bad requests in the API's error shape: path
//! parameters (every name checked with the spec's rule, in this one place)
//! and query strings.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::topology::{NAME_MAX, valid_name};

/// Path parameters that are free text, not names: store keys.
const FREE_TEXT: &[&str] = &["key"];

/// Refuses `name` unless it follows the rule every name follows (the spec's:
/// 1-200 of `a-z A-Z 0-9 . _ -`, not dots only).
pub fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if valid_name(name) {
        return Ok(());
    }
    let shown: String = name.chars().take(60).collect();
    let more = if name.chars().count() > 60 { "..." } else { "" };
    Err(ApiError::bad_request(
        "bad-name",
        format!("{what} `{shown}{more}` is not a valid name: 1-{NAME_MAX} of a-z A-Z 0-9 . _ -, not dots only"),
    ))
}

/// Like [`Path`], with every parameter but free text ([`FREE_TEXT`])
/// checked by [`check_name`], and a JSON error for a bad path.
pub struct NamePath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for NamePath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let bad = |e: axum::extract::rejection::PathRejection| ApiError::new(e.status(), "bad-path", e.body_text());
        let Path(params) = Path::<Vec<(String, String)>>::from_request_parts(parts, state).await.map_err(bad)?;
        for (key, value) in &params {
            if !FREE_TEXT.contains(&key.as_str()) {
                check_name(key, value)?;
            }
        }
        let Path(value) = Path::<T>::from_request_parts(parts, state).await.map_err(bad)?;
        Ok(NamePath(value))
    }
}

/// Like [`Query`], with a JSON error for a bad query string.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("bad-query", e.body_text()))?;
        Ok(ApiQuery(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec_rule() {
        for good in ["a", "key-count", "v1.2_3", "..a", &"x".repeat(NAME_MAX)] {
            assert!(check_name("name", good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "...", "../..", "a/b", "a\\b", "%2e", "é", "a b", &"x".repeat(NAME_MAX + 1)] {
            let e = check_name("name", bad).expect_err(bad);
            assert_eq!((e.status.as_u16(), e.code), (400, "bad-name"), "{bad}");
        }
    }
}
