//! `DocName`: the validated name of a document, shared by every layer.
//!
//! A name is 1–255 bytes of `[A-Za-z0-9._~-]` (the URL "unreserved" set), so it
//! can appear in URLs, log lines and storage keys without escaping.

use std::fmt;

/// Longest document name accepted, in bytes.
pub const MAX_DOC_NAME_LEN: usize = 255;

/// A document name that passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocName(String);

/// Why a string is not a valid document name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDocName {
    #[error("document name is empty; use 1 to {MAX_DOC_NAME_LEN} characters of [A-Za-z0-9._~-]")]
    Empty,
    #[error("document name is {0} bytes long; the limit is {MAX_DOC_NAME_LEN}")]
    TooLong(usize),
    #[error("document name contains {0:?}; only letters, digits and . _ ~ - are allowed")]
    BadCharacter(char),
}

impl DocName {
    /// Validates `name` (already percent-decoded).
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidDocName> {
        let name = name.into();
        if name.is_empty() {
            return Err(InvalidDocName::Empty);
        }
        if name.len() > MAX_DOC_NAME_LEN {
            return Err(InvalidDocName::TooLong(name.len()));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '-')))
        {
            return Err(InvalidDocName::BadCharacter(bad));
        }
        Ok(DocName(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DocName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DocName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_unreserved_characters() {
        for ok in ["a", "Doc-1", "team.a_b~c", &"x".repeat(255)] {
            assert_eq!(DocName::new(ok).map(|n| n.to_string()), Ok(ok.to_string()));
        }
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(DocName::new(""), Err(InvalidDocName::Empty));
        assert_eq!(
            DocName::new("x".repeat(256)),
            Err(InvalidDocName::TooLong(256))
        );
        for (bad, c) in [
            ("a/b", '/'),
            ("a b", ' '),
            ("é", 'é'),
            ("a\0", '\0'),
            ("%2F", '%'),
        ] {
            assert_eq!(DocName::new(bad), Err(InvalidDocName::BadCharacter(c)));
        }
    }
}
