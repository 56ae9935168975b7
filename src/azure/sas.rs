//! Blob URLs that may carry a SAS token, which is a bearer secret.
//!
//! A [`SasUrl`] is the only way a blob URL enters the program. Its `Debug` and `Display`
//! replace the value of every signature-like query parameter (`sig`, and the few others
//! that carry secrets) by `REDACTED`, so printing one in a log, an error or a panic message
//! is safe. [`SasUrl::identity`] — scheme, host, port and path — names the blob in the
//! resume journal without any query at all. [`scrub`] cleans text that came from elsewhere
//! (transport errors quote the URL they failed on).
//!
//! Plain `http` is allowed only for loopback hosts (Azurite, test proxies): over a network
//! it would send the SAS in clear text. Names under `localhost.` count as loopback (RFC 6761
//! §6.3): the shared transport resolves them to 127.0.0.1 itself (`azure::http`), never
//! through DNS.
//!
//! [`SasUrl::is_managed_disk_export`] tells a managed-disk export URL (what Grant Access
//! returns) from a storage-account blob: the two accept different requests (see
//! `azure::blob`).

use std::fmt;
use std::net::IpAddr;

use azure_core::http::Url;

/// Query parameters whose values are secrets. `sig` is the SAS signature; the others appear
/// in user-delegation SAS and signed URLs of other services pasted by mistake.
const SECRET_PARAMS: &[&str] = &[
    "sig",
    "signature",
    "x-amz-signature",
    "x-goog-signature",
    "token",
    "access_token",
    "code",
];

const REDACTED: &str = "REDACTED";

/// Shortest secret value that [`SasUrl::scrub`] removes wherever it appears in a text.
const MIN_FREE_STANDING_SECRET: usize = 8;

/// Why a URL was refused. Never quotes the query string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasUrlError {
    #[error("not a valid URL: {0}")]
    Parse(String),
    #[error("unsupported URL scheme {0:?}: use https (http only for 127.0.0.1/localhost)")]
    Scheme(String),
    #[error(
        "plain http to {host} refused: a SAS travels in clear text; use https (http is allowed only for loopback hosts)"
    )]
    InsecureHost { host: String },
    #[error("URL {0} names no blob: expected https://ACCOUNT.blob.../CONTAINER/BLOB?SAS")]
    NoBlob(String),
}

/// A blob URL, possibly with a SAS query, that never prints its secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct SasUrl {
    url: Url,
}

impl SasUrl {
    /// Parses and checks a blob URL (see the module note for the http rule).
    pub fn parse(input: &str) -> Result<Self, SasUrlError> {
        // The parse error text of the url crate does not quote the input, so it is safe.
        let url = Url::parse(input.trim()).map_err(|e| SasUrlError::Parse(e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" => {
                if !is_loopback(&url) {
                    return Err(SasUrlError::InsecureHost {
                        host: url.host_str().unwrap_or("").to_string(),
                    });
                }
            }
            other => return Err(SasUrlError::Scheme(other.to_string())),
        }
        let me = Self { url };
        let segments = me
            .url
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).count())
            .unwrap_or(0);
        if me.url.host_str().is_none() || segments < 2 {
            return Err(SasUrlError::NoBlob(me.identity()));
        }
        Ok(me)
    }

    /// The URL with its secrets, for the SDK only. Do not print it.
    pub fn expose(&self) -> &Url {
        &self.url
    }

    /// Whether the URL carries a SAS signature (else it needs a token credential).
    pub fn has_sas(&self) -> bool {
        self.url
            .query_pairs()
            .any(|(k, _)| k.eq_ignore_ascii_case("sig"))
    }

    /// Whether this is a managed-disk import/export URL (`md-impexp-….blob.storage.azure.net`,
    /// the older `md-….blob.storage.azure.net`, or either under another cloud's suffix).
    /// Decided on the parsed host's first label, as AzCopy does (ste/sender-pageBlob.go,
    /// `isInManagedDiskImportExportAccount`: prefix `md-` of the URL's host). No storage
    /// account can look like one: account names are 3–24 lower-case letters and digits, so
    /// an `md-` label is never an account's blob host.
    pub fn is_managed_disk_export(&self) -> bool {
        match self.url.host() {
            Some(url::Host::Domain(d)) => d
                .split('.')
                .next()
                .is_some_and(|label| label.len() > 3 && label[..3].eq_ignore_ascii_case("md-")),
            _ => false,
        }
    }

    /// `scheme://host[:port]/path`: names the blob without any query (journal, messages).
    pub fn identity(&self) -> String {
        let mut u = self.url.clone();
        u.set_query(None);
        u.set_fragment(None);
        u.to_string()
    }

    /// When the SAS stops working, as written in its `se` parameter (for messages).
    pub fn expiry(&self) -> Option<String> {
        self.url
            .query_pairs()
            .find(|(k, _)| k == "se")
            .map(|(_, v)| v.into_owned())
    }

    /// The secret values in this URL, raw and as they appear percent-encoded, for [`scrub`].
    fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(q) = self.url.query() {
            for pair in q.split('&') {
                if let Some((k, v)) = pair.split_once('=')
                    && is_secret_param(k)
                    && !v.is_empty()
                {
                    out.push(v.to_string());
                }
            }
        }
        for (k, v) in self.url.query_pairs() {
            if is_secret_param(&k) && !v.is_empty() {
                out.push(v.into_owned());
            }
        }
        out
    }

    /// Removes this URL's secrets, and any `sig=` value, from `text`.
    ///
    /// A secret is looked for anywhere in the text (an error may quote it decoded, out of
    /// its query) only when it is long enough to be one: a real signature is 43+ base64
    /// characters, while a toy value such as `sig=x` would otherwise blank out every `x`
    /// of the message. Short values are still removed where they stand after `sig=`.
    pub fn scrub(&self, text: &str) -> String {
        let mut s = text.to_string();
        for secret in self.secrets() {
            if secret.len() >= MIN_FREE_STANDING_SECRET {
                s = s.replace(&secret, REDACTED);
            }
        }
        scrub(&s)
    }
}

fn is_secret_param(key: &str) -> bool {
    SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(key))
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => is_localhost_name(d),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// `localhost` and any name under it (RFC 6761 §6.3), with or without the final dot.
pub fn is_localhost_name(host: &str) -> bool {
    let h = host.strip_suffix('.').unwrap_or(host);
    h.eq_ignore_ascii_case("localhost")
        || h.len() > ".localhost".len()
            && h[h.len() - ".localhost".len()..].eq_ignore_ascii_case(".localhost")
}

/// Replaces the value of every secret query parameter found anywhere in `text` (e.g. a URL
/// quoted inside a transport error) by `REDACTED`.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'outer: while !rest.is_empty() {
        // Look for "<param>=" right after '?' or '&'.
        for (i, c) in rest.char_indices() {
            if c == '?' || c == '&' {
                let after = &rest[i + 1..];
                if let Some(eq) = after.find('=') {
                    let key = &after[..eq];
                    if is_secret_param(key) {
                        out.push_str(&rest[..i + 1 + eq + 1]);
                        out.push_str(REDACTED);
                        let value = &after[eq + 1..];
                        let end = value
                            .find(|ch: char| {
                                ch == '&'
                                    || ch.is_whitespace()
                                    || matches!(ch, ')' | '"' | '\'' | '>' | ',' | ';')
                            })
                            .unwrap_or(value.len());
                        rest = &value[end..];
                        continue 'outer;
                    }
                }
            }
        }
        out.push_str(rest);
        break;
    }
    out
}

impl fmt::Display for SasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut u = self.url.clone();
        if u.query().is_some() {
            let pairs: Vec<(String, String)> = self
                .url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if is_secret_param(&k) {
                        REDACTED.to_string()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), v)
                })
                .collect();
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        f.write_str(u.as_str())
    }
}

impl fmt::Debug for SasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SasUrl").field(&self.to_string()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "AbC%2Bde%2Ffg%3D";
    const SIG_DECODED: &str = "AbC+de/fg=";

    fn url() -> SasUrl {
        SasUrl::parse(&format!(
            "https://md-abc.z1.blob.storage.azure.net/xyz/abcd?sv=2018-03-28&sr=b&se=2030-01-01T00%3A00%3A00Z&sp=r&sig={SIG}"
        ))
        .unwrap()
    }

    #[test]
    fn display_debug_and_identity_hide_the_signature() {
        let u = url();
        for shown in [
            u.to_string(),
            format!("{u:?}"),
            format!("{u:#?}"),
            u.identity(),
        ] {
            assert!(!shown.contains(SIG), "{shown}");
            assert!(!shown.contains(SIG_DECODED), "{shown}");
            assert!(!shown.contains("AbC"), "{shown}");
        }
        assert!(u.to_string().contains("sig=REDACTED"));
        assert!(u.to_string().contains("sp=r"));
        assert_eq!(
            u.identity(),
            "https://md-abc.z1.blob.storage.azure.net/xyz/abcd"
        );
        assert!(u.has_sas());
    }

    #[test]
    fn errors_and_panics_built_from_it_hide_the_signature() {
        let u = url();
        let msg = format!("failed on {u}: {:?}", Some(&u));
        assert!(!msg.contains("AbC"));
        let panic = std::panic::catch_unwind(|| panic!("bad blob {}", url())).unwrap_err();
        let text = panic.downcast_ref::<String>().unwrap();
        assert!(!text.contains("AbC") && text.contains("REDACTED"));
    }

    #[test]
    fn scrub_cleans_urls_quoted_by_other_code() {
        let u = url();
        let raw = format!(
            "error sending request for url ({}): connection reset; decoded {SIG_DECODED}",
            u.expose()
        );
        let clean = u.scrub(&raw);
        assert!(!clean.contains("AbC"), "{clean}");
        assert_eq!(
            scrub("GET /c/b?sv=1&sig=secret%3D&sp=r and ?Signature=x)"),
            "GET /c/b?sv=1&sig=REDACTED&sp=r and ?Signature=REDACTED)"
        );
    }

    #[test]
    fn a_toy_signature_does_not_blank_out_the_message() {
        let u = SasUrl::parse("https://acct.blob.core.windows.net/c/d.vhd?sv=2020&sig=x").unwrap();
        let raw = format!("failed to execute GET {}", u.expose());
        assert_eq!(
            u.scrub(&raw),
            "failed to execute GET https://acct.blob.core.windows.net/c/d.vhd?sv=2020&sig=REDACTED"
        );
    }

    #[test]
    fn plain_http_only_for_loopback() {
        assert!(SasUrl::parse("http://127.0.0.1:10000/devstoreaccount1/c/b?sig=x").is_ok());
        assert!(SasUrl::parse("http://localhost:10000/devstoreaccount1/c/b").is_ok());
        assert!(SasUrl::parse("http://[::1]:10000/a/c/b").is_ok());
        let e = SasUrl::parse("http://acct.blob.core.windows.net/c/b?sig=secretvalue").unwrap_err();
        assert!(matches!(e, SasUrlError::InsecureHost { .. }));
        assert!(!e.to_string().contains("secretvalue"));
        assert!(matches!(
            SasUrl::parse("ftp://127.0.0.1/c/b"),
            Err(SasUrlError::Scheme(_))
        ));
    }

    #[test]
    fn localhost_names_are_loopback_and_nothing_else_is() {
        assert!(SasUrl::parse("http://md-impexp-t1.localhost:10000/a/c/b?sig=x").is_ok());
        assert!(SasUrl::parse("http://LOCALHOST.:10000/a/c/b").is_ok());
        for host in [
            "localhost.example.com",
            "notlocalhost",
            "md-x.localhost.evil.net",
            "xlocalhost",
        ] {
            assert!(
                matches!(
                    SasUrl::parse(&format!("http://{host}/a/c/b?sig=x")),
                    Err(SasUrlError::InsecureHost { .. })
                ),
                "{host}"
            );
        }
    }

    #[test]
    fn managed_disk_hosts_are_told_by_the_first_label() {
        let md = |u: &str| SasUrl::parse(u).unwrap().is_managed_disk_export();
        assert!(md(
            "https://md-impexp-x4230cnts5d5.z18.blob.storage.azure.net/b0/abcd?sig=s"
        ));
        assert!(md(
            "https://md-hdd-t0rdsfgs.z7.blob.storage.azure.net/w2/abcd?sig=s"
        ));
        assert!(md(
            "https://MD-IMPEXP-T0RD.blob.core.windows.net/w2/abcd?sig=s"
        ));
        assert!(md(
            "http://md-impexp-fake.localhost:8080/devstoreaccount1/c/b?sig=s"
        ));
        // Storage accounts, a look-alike further down the name, IP addresses, a bare "md-".
        assert!(!md("https://mystorage.blob.core.windows.net/vhds/a.vhd"));
        assert!(!md(
            "https://acct.blob.core.windows.net/md-impexp-x/abcd?sig=s"
        ));
        assert!(!md(
            "https://evil.md-impexp.blob.storage.azure.net.example/c/b"
        ));
        assert!(!md("https://mdimpexp.blob.core.windows.net/c/b"));
        assert!(!md("https://md-/c/b"));
        assert!(!md("http://127.0.0.1:10000/devstoreaccount1/c/b?sig=s"));
    }

    #[test]
    fn refuses_urls_without_container_and_blob() {
        assert!(matches!(
            SasUrl::parse("https://acct.blob.core.windows.net/onlycontainer?sig=zz"),
            Err(SasUrlError::NoBlob(m)) if !m.contains("zz")
        ));
        assert!(matches!(
            SasUrl::parse("not a url"),
            Err(SasUrlError::Parse(_))
        ));
    }

    #[test]
    fn managed_disk_export_url_keeps_everything_but_the_signature() {
        let sig = "c2VjcmV0LXNpZ25hdHVyZQ%3D%3D";
        let raw = format!(
            "https://md-abc.z1.blob.storage.azure.net/xyz/abcd?sv=2018-03-28&sr=b&si=x&sig={sig}&se=2026-01-01T00%3A00%3A00Z"
        );
        let sas = SasUrl::parse(&raw).unwrap();
        assert!(sas.has_sas());
        for shown in [format!("{sas:?}"), format!("{sas}"), sas.identity()] {
            assert!(
                !shown.contains(sig) && !shown.contains("c2VjcmV0"),
                "{shown}"
            );
            assert!(
                shown.contains("md-abc.z1.blob.storage.azure.net/xyz/abcd"),
                "{shown}"
            );
        }
        assert!(format!("{sas}").contains("se=2026-01-01"));
        assert_eq!(sas.expose().as_str(), raw);
    }

    #[test]
    fn signature_is_found_and_hidden_in_any_case() {
        let sas = SasUrl::parse("https://a.blob.core.windows.net/c/b?SIG=c2VjcmV0").unwrap();
        assert!(sas.has_sas());
        assert!(!format!("{sas}").contains("c2VjcmV0"));
    }

    #[test]
    fn parse_errors_do_not_echo_the_input() {
        let err = SasUrl::parse("not a url sig=c2VjcmV0")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }
}
