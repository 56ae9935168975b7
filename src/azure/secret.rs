//! Secret-carrying types: a client secret or token ([`Secret`]). SAS URLs have their own
//! type, [`crate::azure::sas::SasUrl`].
//! Redaction is a property of the types, not of the call sites: their `Debug` and `Display`
//! never print the secret part, so a `{:?}` in a log line, an error or a panic is safe
//! (DESIGN.md, style rule 8). The only way to the secret is an explicitly named `expose*`.

use std::fmt;

/// What every redacted value prints instead of the secret.
pub const REDACTED: &str = "***";

/// A secret string (client secret, access token). Prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself: only for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<Secret> for azure_core::credentials::Secret {
    fn from(s: Secret) -> Self {
        azure_core::credentials::Secret::new(s.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_formats_its_value() {
        let s = Secret::new("p4ssw0rd-VERY-secret");
        for shown in [format!("{s:?}"), format!("{s}"), format!("{:#?}", Some(&s))] {
            assert!(!shown.contains("p4ssw0rd"), "{shown}");
            assert!(shown.contains(REDACTED));
        }
        assert_eq!(s.expose(), "p4ssw0rd-VERY-secret");
    }

    #[test]
    fn secret_inside_a_struct_debug_is_redacted() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Settings {
            client_id: String,
            client_secret: Secret,
        }
        let s = Settings {
            client_id: "app".into(),
            client_secret: Secret::new("hunter2hunter2"),
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("app"));
    }
}
