//! The one HTTP transport that every Azure client uses (identity, ARM, later storage), so
//! that `--ca-bundle` applies everywhere: a TLS-inspecting proxy, Azure Stack Hub or a
//! local test endpoint only has to be trusted once. It is the reqwest client azure_core
//! itself would build (same version, rustls, same timeouts, no redirects), plus the extra
//! roots, merged with the platform's roots rather than replacing them.
//!
//! Names under `localhost.` resolve to the loopback address here, without asking DNS (RFC
//! 6761 §6.3 lets applications do so, and `azure::sas` relies on it to allow plain http
//! to them): a test endpoint can then have a real host name — the fake managed-disk
//! export host `md-impexp-….localhost` — and a resolver that answers otherwise cannot
//! divert a SAS sent in clear text. Every other name goes to the system resolver, as
//! reqwest's own default does.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use azure_core::http::{ClientOptions, HttpClient, Transport};

use super::cloud::Cloud;

/// Same as azure_core's default reqwest client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot read --ca-bundle {}: {source}", path.display())]
    ReadBundle {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--ca-bundle {}: {reason}", path.display())]
    BadBundle { path: PathBuf, reason: String },
    #[error("cannot build the HTTPS client: {0}")]
    Build(String),
}

/// Builds the shared HTTP client. `ca_bundle`: a PEM file with one or more extra roots.
pub fn http_client(ca_bundle: Option<&Path>) -> Result<Arc<dyn HttpClient>, HttpError> {
    let mut builder = reqwest::ClientBuilder::new()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        // The pipeline decides about redirects; a silent redirect could carry a token away.
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(LocalhostFirst));
    if let Some(path) = ca_bundle {
        let pem = std::fs::read(path).map_err(|source| HttpError::ReadBundle {
            path: path.to_path_buf(),
            source,
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| HttpError::BadBundle {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(HttpError::BadBundle {
                path: path.to_path_buf(),
                reason: "no PEM certificate in the file".into(),
            });
        }
        tracing::debug!(count = certs.len(), bundle = %path.display(), "adding extra trusted roots");
        builder = builder.tls_certs_merge(certs);
    }
    let client = builder
        .build()
        .map_err(|e| HttpError::Build(e.to_string()))?;
    Ok(Arc::new(client))
}

/// `*.localhost` → loopback (see the module note); anything else → getaddrinfo on a
/// blocking thread, like reqwest's default resolver.
#[derive(Debug)]
struct LocalhostFirst;

impl reqwest::dns::Resolve for LocalhostFirst {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            if super::sas::is_localhost_name(&host) {
                let addrs: reqwest::dns::Addrs = Box::new(
                    [
                        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                        SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
                    ]
                    .into_iter(),
                );
                return Ok(addrs);
            }
            let found = tokio::task::spawn_blocking(move || (host.as_str(), 0).to_socket_addrs())
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)??;
            let addrs: reqwest::dns::Addrs = Box::new(found.collect::<Vec<_>>().into_iter());
            Ok(addrs)
        })
    }
}

/// The transport wrapper that azure_core's `ClientOptions` take. The transfer engine calls
/// this (or [`client_options`]) to share the same trust settings.
pub fn transport(ca_bundle: Option<&Path>) -> Result<Transport, HttpError> {
    http_client(ca_bundle).map(Transport::new)
}

/// Client options for any azure_core/azure_identity client: our transport and cloud, the
/// SDK's default retry policy (which honours Retry-After on 429/503).
pub fn client_options(transport: &Transport, cloud: &Cloud) -> ClientOptions {
    ClientOptions {
        transport: Some(transport.clone()),
        cloud: Some(cloud.sdk_configuration()),
        ..ClientOptions::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_bundle_is_a_clear_error() {
        let e = http_client(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn bundle_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "just text\n").unwrap();
        let e = http_client(Some(&path)).unwrap_err();
        assert!(matches!(e, HttpError::BadBundle { .. }), "{e}");
    }

    /// Without the resolver the name would go to DNS, which does not know it here.
    #[test]
    fn localhost_names_reach_loopback_without_dns() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = c.read(&mut buf).unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            c.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .unwrap();
            head
        });
        let client = http_client(None).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url: azure_core::http::Url = format!("http://md-impexp-t.localhost:{port}/a/c/b")
            .parse()
            .unwrap();
        let req = azure_core::http::Request::new(url, azure_core::http::Method::Get);
        let rsp = rt.block_on(client.execute_request(&req)).unwrap();
        assert_eq!(u16::from(rsp.status()), 204);
        let head = server.join().unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains("host: md-impexp-t.localhost:"),
            "{head}"
        );
    }

    #[test]
    fn no_bundle_builds() {
        http_client(None).unwrap();
    }
}
