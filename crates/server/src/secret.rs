//! `Secret`: a setting that is never shown: not by `Debug`, not by
//! `--print-config`, and so never in a log line.

use serde::Serialize;

/// A secret setting: never shown by `Debug` or serialized (and so never
/// logged or printed).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(Secret::REDACTED)
    }
}

impl Secret {
    /// What is shown instead of the secret.
    pub const REDACTED: &str = "<redacted>";

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Secret::REDACTED)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}
