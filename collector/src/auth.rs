//! Bearer tokens for ingest and API, compared in constant time. No tokens configured (only
//! allowed on loopback, or with `--insecure`) means no authentication.

use std::path::Path;

use subtle::ConstantTimeEq;

use crate::app::ServerError;

#[derive(Clone, Debug, Default)]
pub struct Tokens(Vec<Vec<u8>>);

impl Tokens {
    pub fn none() -> Tokens {
        Tokens(Vec::new())
    }

    /// One token per line; blank lines and `#` comments are skipped.
    pub fn load(path: &Path) -> Result<Tokens, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServerError::TokenFile {
            path: path.to_path_buf(),
            source: e,
        })?;
        let t = Tokens::parse(&text);
        if t.0.is_empty() {
            return Err(ServerError::NoToken(path.to_path_buf()));
        }
        Ok(t)
    }

    pub fn parse(text: &str) -> Tokens {
        Tokens(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(|l| l.as_bytes().to_vec())
                .collect(),
        )
    }

    pub fn required(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether an `Authorization` header value grants access.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(given) = authorization.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        // Compare against every token so the time taken does not say which one matched.
        let mut ok = subtle::Choice::from(0);
        for t in &self.0 {
            ok |= t.as_slice().ct_eq(given);
        }
        ok.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_grant_only_themselves() {
        let t = Tokens::parse("# ops\nsecret-one\n\nsecret-two\n");
        assert!(t.required());
        assert!(t.allows(Some(b"Bearer secret-two")));
        assert!(!t.allows(Some(b"Bearer secret")));
        assert!(!t.allows(Some(b"secret-one")));
        assert!(!t.allows(None));
        assert!(Tokens::none().allows(None));
    }
}
