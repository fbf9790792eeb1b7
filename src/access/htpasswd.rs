//! Client credentials wharf checks: an htpasswd file of bcrypt users (Basic)
//! and a list of bearer tokens. Only bcrypt is accepted: Apache's MD5, SHA-1
//! and crypt(3) entries are refused when the file is read, not silently
//! treated as wrong passwords.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};

/// bcrypt's cost bounds.
const MIN_COST: u32 = 4;
const MAX_COST: u32 = 31;

/// `user:$2y$...` lines.
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// The highest bcrypt cost in the file: what an unknown user's throw-away
    /// check costs, so that it takes as long as a real one.
    cost: u32,
}

impl Htpasswd {
    pub fn parse(text: &str) -> Result<Htpasswd, String> {
        let mut users = HashMap::new();
        let mut cost = MIN_COST;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: not user:hash", i + 1))?;
            if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
                return Err(format!(
                    "line {} (user {user}): only bcrypt hashes are accepted (htpasswd -B)",
                    i + 1
                ));
            }
            // `$2y$NN$`: the cost, 4 to 31 (a bad one fails its checks).
            if let Some(c) = hash.get(4..6).and_then(|c| c.parse::<u32>().ok()) {
                cost = cost.max(c.clamp(MIN_COST, MAX_COST));
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Htpasswd { users, cost })
    }

    /// The bcrypt cost an unknown user's check is run at.
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// The user's hash, if the user exists.
    pub fn hash(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }
}

/// `name:token` lines; tokens are kept only as SHA-256 digests.
pub struct TokenList {
    by_digest: HashMap<[u8; 32], String>,
}

/// Shorter tokens are too easy to guess to guard a registry.
const MIN_TOKEN_LEN: usize = 16;

impl TokenList {
    pub fn parse(bytes: &[u8]) -> Result<TokenList, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
        let mut by_digest = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, token) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: not name:token", i + 1))?;
            if name.is_empty() {
                return Err(format!("line {}: empty name", i + 1));
            }
            if token.len() < MIN_TOKEN_LEN || token.contains(char::is_whitespace) {
                return Err(format!(
                    "line {} ({name}): tokens are at least {MIN_TOKEN_LEN} characters without spaces",
                    i + 1
                ));
            }
            by_digest.insert(Sha256::digest(token.as_bytes()).into(), name.to_owned());
        }
        Ok(TokenList { by_digest })
    }

    /// The name a token belongs to.
    pub fn lookup(&self, token: &str) -> Option<&str> {
        let d: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_digest.get(&d).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_takes_bcrypt_only() {
        let h = Htpasswd::parse(
            "# users\nalice:$2y$05$abcdefghijklmnopqrstuu5Q1Qm5hN4b6pGQ4yQd0b3Fq1t0dB5a\n\n",
        )
        .unwrap();
        assert!(h.hash("alice").is_some());
        assert!(h.hash("bob").is_none());
        assert_eq!(h.cost(), 5);
        let e = Htpasswd::parse("bob:$apr1$xyz$abc\n").err().unwrap();
        assert!(
            e.contains("bob") && e.contains("bcrypt") && !e.contains("xyz"),
            "{e}"
        );
        assert!(Htpasswd::parse("nocolon\n").is_err());
    }

    #[test]
    fn token_lists() {
        let t =
            TokenList::parse(b"ci:0123456789abcdef0123\n# c\nnode:fedcba9876543210fedc\n").unwrap();
        assert_eq!(t.lookup("0123456789abcdef0123"), Some("ci"));
        assert_eq!(t.lookup("0123456789abcdef012"), None);
        assert!(TokenList::parse(b"x:short\n").is_err());
        assert!(TokenList::parse(b":0123456789abcdef0123\n").is_err());
    }
}
