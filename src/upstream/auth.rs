//! Upstream authentication pieces: `WWW-Authenticate` challenge parsing and the
//! bearer token cache.
//!
//! Spec: RFC 7235 §4.1 (challenge syntax) and the Docker token authentication
//! specification (`docs/spec/auth/token.md` in distribution): `GET realm?service=
//! &scope=repository:NAME:pull`, answered with `{"token"|"access_token",
//! "expires_in", "issued_at"}`; `expires_in` defaults to 60 seconds.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::secret::Secret;

/// A parsed authentication challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses one `WWW-Authenticate` value. Unknown schemes give `None`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.find(char::is_whitespace) {
        Some(i) => (&header[..i], &header[i..]),
        None => (header, ""),
    };
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

/// `key=value` or `key="quoted \"value\""`, comma-separated. Keys lowercased.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = s[ks..i].trim().to_ascii_lowercase();
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                // Push whole UTF-8 characters.
                let ch = s[i..].chars().next().expect("in bounds");
                val.push(ch);
                i += ch.len_utf8();
            }
            i += 1; // closing quote
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val = s[vs..i].trim().to_owned();
        }
        if !key.is_empty() {
            out.insert(key, val);
        }
    }
    out
}

/// A bearer token and when wharf stops using it.
#[derive(Clone)]
pub struct Token {
    pub value: Secret,
    pub refresh_at: Instant,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &self.value)
            .field("refresh_at", &self.refresh_at)
            .finish()
    }
}

/// Tokens are dropped this long before they expire (or at 90% of a short
/// lifetime), so a request never leaves with a token about to die in flight.
fn refresh_margin(lifetime: Duration) -> Duration {
    Duration::from_secs(10).min(lifetime / 10)
}

/// The longest a token (or any credential an upstream hands out) is used,
/// whatever it says: a token service answering `expires_in` of 10^19 s (or
/// a year) gets its token asked for again after a day. Docker Hub's live
/// 300 s, GitLab's 900 s.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A lifetime as an upstream stated it, made safe to add to a clock: at most
/// [`MAX_TOKEN_LIFETIME`]; zero, negative, fractional-below-a-second,
/// non-numeric or missing values mean the spec's default (60 s).
pub fn clamp_lifetime(stated: Option<&serde_json::Value>) -> Duration {
    let secs = stated.and_then(|v| match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    });
    match secs {
        Some(s) if s.is_finite() && s >= 1.0 => {
            Duration::from_secs_f64(s.min(MAX_TOKEN_LIFETIME.as_secs_f64()))
        }
        _ => Duration::from_secs(TokenResponse::DEFAULT_EXPIRES_IN),
    }
}

impl Token {
    pub fn new(value: Secret, expires_in: Duration, now: Instant) -> Token {
        let lifetime = expires_in.min(MAX_TOKEN_LIFETIME);
        Token {
            value,
            refresh_at: now + lifetime - refresh_margin(lifetime),
        }
    }
}

/// The token response body. `expires_in` is read as any JSON value, so a
/// negative, fractional, huge or quoted number is clamped, not a parse
/// failure and never a clock overflow.
#[derive(serde::Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<serde_json::Value>,
}

impl TokenResponse {
    pub const DEFAULT_EXPIRES_IN: u64 = 60;
    pub fn into_token(self, now: Instant) -> Option<Token> {
        let value = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        Some(Token::new(
            Secret::new(value),
            clamp_lifetime(self.expires_in.as_ref()),
            now,
        ))
    }
}

/// Scopes whose tokens one upstream keeps at most. Every repository name a
/// client asks for is a scope (Docker Hub hands anonymous tokens out for
/// names that do not exist), and a token is a kilobyte or two: without a
/// bound, anonymous requests for made-up names grow the map for ever.
pub const MAX_TOKENS: usize = 4096;

/// Bearer tokens of one upstream, keyed by scope (`repository:NAME:pull`),
/// at most [`MAX_TOKENS`]: a full map drops its expired tokens, then the
/// one due for refresh soonest.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, Token>>,
}

impl TokenCache {
    pub fn get(&self, scope: &str, now: Instant) -> Option<Secret> {
        let mut map = self.tokens.lock();
        match map.get(scope) {
            Some(t) if t.refresh_at > now => Some(t.value.clone()),
            Some(_) => {
                map.remove(scope);
                None
            }
            None => None,
        }
    }
    pub fn put(&self, scope: &str, token: Token, now: Instant) {
        let mut map = self.tokens.lock();
        if map.len() >= MAX_TOKENS && !map.contains_key(scope) {
            map.retain(|_, t| t.refresh_at > now);
            if map.len() >= MAX_TOKENS {
                let soonest = map
                    .iter()
                    .min_by_key(|(_, t)| t.refresh_at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    map.remove(&k);
                }
            }
        }
        map.insert(scope.to_owned(), token);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tokens.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull".into()),
            }
        );
    }

    #[test]
    fn odd_but_valid_challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("basic"), Some(Challenge::Basic));
        let c =
            parse_challenge(r#"bearer   Realm=http://127.0.0.1:1/t , service="a \"b\"""#).unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: Some("a \"b\"".into()),
                scope: None
            }
        );
        // GitLab puts the realm on another host; still just a URL here.
        let c = parse_challenge(
            r#"Bearer realm="https://gitlab.example.com/jwt/auth",service="container_registry",scope="repository:g/p:pull",error="insufficient_scope""#,
        );
        assert!(matches!(c, Some(Challenge::Bearer { .. })));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_challenge(""), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(
            parse_challenge("Bearer service=x"),
            None,
            "bearer needs a realm"
        );
        // Unterminated quotes and stray bytes do not panic.
        for s in [
            "Bearer realm=\"",
            "Bearer realm=\"\\",
            "Bearer ,,,=,=",
            "Bearer realm=\"é\\é\"",
        ] {
            let _ = parse_challenge(s);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_expire_before_their_lifetime() {
        let cache = TokenCache::default();
        let now = Instant::now();
        let tok = TokenResponse {
            token: Some("t".into()),
            access_token: None,
            expires_in: Some(20.into()),
        }
        .into_token(now)
        .unwrap();
        cache.put("s", tok, now);
        assert!(cache.get("s", Instant::now()).is_some());
        tokio::time::advance(Duration::from_secs(17)).await;
        assert!(cache.get("s", Instant::now()).is_some());
        tokio::time::advance(Duration::from_secs(1)).await; // 18 s = 90% of 20
        assert!(cache.get("s", Instant::now()).is_none());
        assert!(cache.get("other", Instant::now()).is_none());
    }

    /// Regression: one token per scope ever asked for, kept until that
    /// same scope was asked for again: anonymous requests for made-up
    /// repository names grew the map without end.
    #[test]
    fn the_token_map_is_bounded_whatever_scopes_are_asked_for() {
        let cache = TokenCache::default();
        let now = Instant::now();
        let token = |secs: u64| Token::new(Secret::new("t"), Duration::from_secs(secs), now);
        for i in 0..MAX_TOKENS + 100 {
            cache.put(&format!("repository:made-up-{i}:pull"), token(300), now);
        }
        assert_eq!(cache.len(), MAX_TOKENS);
        // The newest is kept; expired ones go first.
        assert!(cache
            .get(&format!("repository:made-up-{}:pull", MAX_TOKENS + 99), now)
            .is_some());
        let later = now + Duration::from_secs(3600);
        cache.put(
            "fresh",
            Token::new(Secret::new("t"), Duration::from_secs(300), later),
            later,
        );
        assert_eq!(cache.len(), 1, "every other token had expired");
    }

    #[test]
    fn token_response_defaults() {
        let now = Instant::now();
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"a"}"#).unwrap();
        let t = t.into_token(now).unwrap();
        assert_eq!(t.refresh_at - now, Duration::from_secs(54));
        assert!(!format!("{t:?}").contains("\"a\""), "token value redacted");
        let t: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert!(t.into_token(now).is_none());
    }

    /// Regression: `expires_in` of u64::MAX panicked (`Instant + Duration`
    /// overflow) in every request of that token scope.
    #[test]
    fn absurd_lifetimes_are_clamped_not_panics() {
        let now = Instant::now();
        let day = MAX_TOKEN_LIFETIME - refresh_margin(MAX_TOKEN_LIFETIME);
        let default = Duration::from_secs(54);
        for (json, want) in [
            (r#"{"token":"t","expires_in":18446744073709551615}"#, day),
            (r#"{"token":"t","expires_in":1e300}"#, day),
            (r#"{"token":"t","expires_in":31536000}"#, day),
            (r#"{"token":"t","expires_in":0}"#, default),
            (r#"{"token":"t","expires_in":-5}"#, default),
            (r#"{"token":"t","expires_in":0.5}"#, default),
            (r#"{"token":"t","expires_in":"x"}"#, default),
            (r#"{"token":"t","expires_in":null}"#, default),
            (
                r#"{"token":"t","expires_in":"300"}"#,
                Duration::from_secs(290),
            ),
        ] {
            let t: TokenResponse = serde_json::from_str(json).unwrap();
            let t = t.into_token(now).unwrap();
            assert_eq!(t.refresh_at - now, want, "{json}");
        }
        let t = Token::new(Secret::new("t"), Duration::MAX, now);
        assert_eq!(t.refresh_at - now, day);
    }
}
