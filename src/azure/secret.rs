//! Secret-carrying types: a client secret or token ([`Secret`]) and a SAS URL ([`SasUrl`]).
//! Redaction is a property of the types, not of the call sites: their `Debug` and `Display`
//! never print the secret part, so a `{:?}` in a log line, an error or a panic is safe
//! (DESIGN.md, style rule 8). The only way to the secret is an explicitly named `expose*`.

use std::fmt;

use azure_core::http::Url;

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

/// A URL whose query carries a shared access signature (a disk's or snapshot's export URL,
/// or a blob SAS). `Debug`/`Display` print it with the `sig` value replaced by `***`, so the
/// account, container, blob, permissions and expiry stay visible for diagnosis.
#[derive(Clone, PartialEq, Eq)]
pub struct SasUrl(Url);

impl SasUrl {
    pub fn new(url: Url) -> Self {
        Self(url)
    }

    /// Parses a URL. The parse error never repeats the input (it may hold a signature).
    pub fn parse(s: &str) -> Result<Self, SasParseError> {
        Url::parse(s)
            .map(Self)
            .map_err(|e| SasParseError(e.to_string()))
    }

    /// The full URL including the signature: only for the request that uses it.
    pub fn expose_url(&self) -> &Url {
        &self.0
    }

    /// The URL with `sig` redacted, as `Display` prints it.
    pub fn redacted(&self) -> String {
        redact_query_param(&self.0, "sig")
    }

    /// Whether the URL carries a signature at all.
    pub fn has_signature(&self) -> bool {
        self.0.query().unwrap_or("").split('&').any(|kv| {
            kv.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("sig"))
        })
    }
}

impl fmt::Debug for SasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SasUrl({})", self.redacted())
    }
}

impl fmt::Display for SasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A SAS URL that does not parse; carries the parser's reason only, never the input.
#[derive(Debug, thiserror::Error)]
#[error("not a valid URL: {0}")]
pub struct SasParseError(String);

/// Rebuilds the URL text with the value of every `name` query parameter (any case) replaced
/// by `***`. Works on the raw query so that nothing else is re-encoded.
fn redact_query_param(url: &Url, name: &str) -> String {
    let mut base = url.clone();
    base.set_query(None);
    base.set_fragment(None);
    let mut out = base.to_string();
    if let Some(query) = url.query() {
        out.push('?');
        let parts: Vec<String> = query
            .split('&')
            .map(|kv| {
                let key = kv.split('=').next().unwrap_or("");
                if key.eq_ignore_ascii_case(name) {
                    format!("{key}={REDACTED}")
                } else {
                    kv.to_string()
                }
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "c2VjcmV0LXNpZ25hdHVyZQ%3D%3D";

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

    #[test]
    fn sas_url_hides_sig_only() {
        let raw = format!(
            "https://md-abc.z1.blob.storage.azure.net/xyz/abcd?sv=2018-03-28&sr=b&si=x&sig={SIG}&se=2026-01-01T00%3A00%3A00Z"
        );
        let sas = SasUrl::parse(&raw).unwrap();
        assert!(sas.has_signature());
        for shown in [format!("{sas:?}"), format!("{sas}"), sas.redacted()] {
            assert!(!shown.contains(SIG), "{shown}");
            assert!(!shown.contains("c2VjcmV0"), "{shown}");
            assert!(shown.contains("sig=***"), "{shown}");
            assert!(shown.contains("md-abc.z1.blob.storage.azure.net/xyz/abcd"));
            assert!(shown.contains("se=2026-01-01T00%3A00%3A00Z"), "{shown}");
        }
        assert_eq!(sas.expose_url().as_str(), raw);
    }

    #[test]
    fn sas_url_hides_sig_in_any_case() {
        let sas = SasUrl::parse(&format!("https://a.blob.core.windows.net/c/b?SIG={SIG}")).unwrap();
        assert!(!format!("{sas}").contains(SIG));
        assert!(sas.has_signature());
    }

    #[test]
    fn sas_url_without_query_prints_plainly() {
        let sas = SasUrl::parse("https://a.blob.core.windows.net/c/b").unwrap();
        assert_eq!(sas.to_string(), "https://a.blob.core.windows.net/c/b");
        assert!(!sas.has_signature());
    }

    #[test]
    fn sas_parse_error_does_not_echo_input() {
        let err =
            SasParseError::to_string(&SasUrl::parse(&format!("not a url sig={SIG}")).unwrap_err());
        assert!(!err.contains(SIG), "{err}");
    }
}
