//! Auth (README "Security: auth and limits"): HS256 JWTs with `exp`, as `Authorization: Bearer` or
//! `?token=`.
//!
//! `{"role":"admin"}` may do everything. `{"role":"member","studies":[42]}` may read and subscribe
//! to those studies' rooms and rows and post messages and files to them, nothing else. Without a
//! configured secret there is no auth (and the server only binds loopback, see `app`).

use std::collections::HashSet;

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

/// The shortest accepted HS256 secret: RFC 7518 §3.2 asks for a key at least as long as the
/// hash (256 bits). A shorter one (an empty one above all) is refused at start, never "no auth".
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Clone)]
pub struct Auth {
    /// `None`: auth is off, everyone is admin.
    key: Option<DecodingKey>,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Auth").field("enabled", &self.key.is_some()).finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Member,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub role: Role,
    #[serde(default)]
    pub studies: Vec<i64>,
    pub exp: u64,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Access {
    /// Auth is off, or the token says admin.
    Admin,
    /// A member of these studies.
    Member(HashSet<i64>),
}

impl Access {
    pub fn is_admin(&self) -> bool {
        matches!(self, Access::Admin)
    }

    /// Whether this caller may read and post to study `id`.
    pub fn may_study(&self, id: i64) -> bool {
        match self {
            Access::Admin => true,
            Access::Member(studies) => studies.contains(&id),
        }
    }
}

/// Why a request was not authenticated: 401 on HTTP, a refused WebSocket upgrade.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required (Authorization: Bearer or ?token=)")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl Auth {
    pub fn new(secret: Option<&str>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.required_spec_claims = HashSet::from(["exp".to_owned()]);
        validation.leeway = 0;
        // A token that is not valid yet is refused like an expired one.
        validation.validate_nbf = true;
        Auth {
            key: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
        }
    }

    /// `--jwt-audience` / `--jwt-issuer`: a token must then carry that `aud` / `iss` claim (a
    /// token without it is refused too).
    pub fn expecting(mut self, audience: Option<&str>, issuer: Option<&str>) -> Self {
        if let Some(aud) = audience {
            self.validation.set_audience(&[aud]);
            self.validation.required_spec_claims.insert("aud".to_owned());
        }
        if let Some(iss) = issuer {
            self.validation.set_issuer(&[iss]);
            self.validation.required_spec_claims.insert("iss".to_owned());
        }
        self
    }

    pub fn enabled(&self) -> bool {
        self.key.is_some()
    }

    /// Checks the request's token, from `Authorization: Bearer` or the `token` query parameter.
    pub fn check(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<Access, AuthError> {
        self.check_until(headers, query_token).map(|(access, _)| access)
    }

    /// [`Auth::check`], and the token's `exp` (Unix seconds; `None` when auth is off): a stream
    /// ends there, so its rights never outlive the token.
    pub fn check_until(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<(Access, Option<u64>), AuthError> {
        let Some(key) = &self.key else {
            return Ok((Access::Admin, None));
        };
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        let token = bearer
            .or(query_token)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let access = match data.claims.role {
            Role::Admin => Access::Admin,
            Role::Member => Access::Member(data.claims.studies.into_iter().collect()),
        };
        Ok((access, Some(data.claims.exp)))
    }
}

/// A timer that fires when a token that expires at `exp` (Unix seconds) has expired, and never for
/// `None`: what a stream waits on to end at its token's `exp`, so a stream's rights never outlive
/// its token.
pub fn expiry(exp: Option<u64>) -> tokio::time::Sleep {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // tokio reads a wait too long for its clock as "far in the future".
    let left = exp.map_or(std::time::Duration::MAX, |exp| {
        std::time::Duration::from_secs(exp).saturating_sub(now)
    });
    tokio::time::sleep(left)
}

/// Pulls `token=` out of a raw query string (for handlers that do not otherwise parse it).
pub fn query_token(query: Option<&str>) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query?).ok()?;
    pairs.into_iter().find(|(k, _)| k == "token").map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn token(alg: Algorithm, secret: &str, claims: serde_json::Value) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        h
    }

    fn later() -> u64 {
        (chrono::Utc::now().timestamp() + 3600) as u64
    }

    #[test]
    fn admin_and_member_tokens_are_read_from_header_or_query() {
        let auth = Auth::new(Some("s3cret"));
        let admin = token(
            Algorithm::HS256,
            "s3cret",
            serde_json::json!({"role": "admin", "exp": later()}),
        );
        assert!(auth.check(&bearer(&admin), None).unwrap().is_admin());
        let member = token(
            Algorithm::HS256,
            "s3cret",
            serde_json::json!({"role": "member", "studies": [4], "exp": later()}),
        );
        let access = auth.check(&HeaderMap::new(), Some(&member)).unwrap();
        assert!(access.may_study(4) && !access.may_study(5) && !access.is_admin());
    }

    #[test]
    fn missing_expired_unsigned_wrongly_signed_and_exp_less_tokens_are_refused() {
        let auth = Auth::new(Some("s3cret"));
        assert!(matches!(auth.check(&HeaderMap::new(), None), Err(AuthError::Missing)));
        let expired = token(
            Algorithm::HS256,
            "s3cret",
            serde_json::json!({"role": "admin", "exp": 1000}),
        );
        assert!(auth.check(&bearer(&expired), None).is_err());
        let wrong = token(
            Algorithm::HS256,
            "other",
            serde_json::json!({"role": "admin", "exp": later()}),
        );
        assert!(auth.check(&bearer(&wrong), None).is_err());
        let no_exp = token(Algorithm::HS256, "s3cret", serde_json::json!({"role": "admin"}));
        assert!(auth.check(&bearer(&no_exp), None).is_err());
        let hs512 = token(
            Algorithm::HS512,
            "s3cret",
            serde_json::json!({"role": "admin", "exp": later()}),
        );
        assert!(auth.check(&bearer(&hs512), None).is_err());
        // alg "none": header {"alg":"none"}, no signature.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(r#"{{"role":"admin","exp":{}}}"#, later()))
        );
        assert!(auth.check(&bearer(&none), None).is_err());
        assert!(auth.check(&bearer("garbage"), None).is_err());
    }

    #[test]
    fn without_a_secret_everyone_is_admin() {
        assert!(Auth::new(None).check(&HeaderMap::new(), None).unwrap().is_admin());
    }

    #[test]
    fn query_tokens_are_found_and_decoded() {
        assert_eq!(query_token(Some("topics=a&token=x%2Ey")).as_deref(), Some("x.y"));
        assert_eq!(query_token(Some("topics=a")), None);
        assert_eq!(query_token(None), None);
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn any_query_string_or_token_is_an_answer_never_a_panic(q in "\\PC{0,200}", t in "\\PC{0,300}") {
            let _ = query_token(Some(&q));
            let auth = Auth::new(Some("secret"));
            let mut headers = HeaderMap::new();
            if let Ok(v) = format!("Bearer {t}").parse() {
                headers.insert("authorization", v);
            }
            prop_assert!(auth.check(&headers, Some(&t)).is_err());
        }
    }
}
