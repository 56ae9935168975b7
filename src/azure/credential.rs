//! The documented credential chain (azure_identity 1.0 has no DefaultAzureCredential).
//!
//! `--auth auto` tries, in this order, and uses the first that yields a token:
//!  1. service principal from the environment: AZURE_TENANT_ID + AZURE_CLIENT_ID +
//!     AZURE_CLIENT_SECRET;
//!  2. workload identity (AKS): AZURE_FEDERATED_TOKEN_FILE (+ AZURE_TENANT_ID, AZURE_CLIENT_ID);
//!  3. managed identity, App Service style: IDENTITY_ENDPOINT + IDENTITY_HEADER;
//!  4. managed identity through IMDS (169.254.169.254) — only when none of 1–3 is
//!     configured, and bounded in time, because off Azure IMDS is slow to give up.
//!
//! A user-assigned managed identity is chosen by `--client-id` or AZURE_CLIENT_ID.
//! The Azure CLI is used only with `--auth azure-cli`, never guessed.
//! When nothing works the error lists every source, whether it was configured, and why it
//! failed — names of variables, never their values.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::ClientOptions;
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};

use super::secret::Secret;

/// How long `auto` waits for IMDS before calling it unavailable.
pub const IMDS_PROBE_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Auto,
    ManagedIdentity,
    WorkloadIdentity,
    ClientSecret,
    AzureCli,
}

/// Everything the chain reads, gathered once (from flags and the environment) so that the
/// choice is a pure function of it and can be tested.
#[derive(Debug, Clone, Default)]
pub struct CredentialSettings {
    pub tenant_id: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub federated_token_file: Option<PathBuf>,
    pub identity_endpoint: Option<String>,
    /// Whether IDENTITY_HEADER is set; its value is a secret and azure_identity reads it.
    pub identity_header_set: bool,
    pub imds_timeout: Option<Duration>,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl CredentialSettings {
    /// Reads AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET,
    /// AZURE_FEDERATED_TOKEN_FILE, IDENTITY_ENDPOINT, IDENTITY_HEADER; flags win over env.
    pub fn from_env(client_id_flag: Option<&str>, tenant_id_flag: Option<&str>) -> Self {
        Self {
            tenant_id: tenant_id_flag
                .map(str::to_string)
                .or_else(|| env_nonempty("AZURE_TENANT_ID")),
            client_id: client_id_flag
                .map(str::to_string)
                .or_else(|| env_nonempty("AZURE_CLIENT_ID")),
            client_secret: env_nonempty("AZURE_CLIENT_SECRET").map(Secret::new),
            federated_token_file: env_nonempty("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from),
            identity_endpoint: env_nonempty("IDENTITY_ENDPOINT"),
            identity_header_set: env_nonempty("IDENTITY_HEADER").is_some(),
            imds_timeout: Some(IMDS_PROBE_TIMEOUT),
        }
    }

    fn missing_for_client_secret(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.tenant_id.is_none() {
            m.push("AZURE_TENANT_ID");
        }
        if self.client_id.is_none() {
            m.push("AZURE_CLIENT_ID");
        }
        if self.client_secret.is_none() {
            m.push("AZURE_CLIENT_SECRET");
        }
        m
    }

    fn missing_for_workload(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.federated_token_file.is_none() {
            m.push("AZURE_FEDERATED_TOKEN_FILE");
        }
        if self.tenant_id.is_none() {
            m.push("AZURE_TENANT_ID");
        }
        if self.client_id.is_none() {
            m.push("AZURE_CLIENT_ID");
        }
        m
    }

    fn missing_for_app_service(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.identity_endpoint.is_none() {
            m.push("IDENTITY_ENDPOINT");
        }
        if !self.identity_header_set {
            m.push("IDENTITY_HEADER");
        }
        m
    }
}

/// One kind of credential the chain can try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    ClientSecret,
    WorkloadIdentity,
    AppServiceManagedIdentity,
    ImdsManagedIdentity,
    AzureCli,
}

impl SourceKind {
    pub fn describe(self) -> &'static str {
        match self {
            Self::ClientSecret => {
                "service principal (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET)"
            }
            Self::WorkloadIdentity => "workload identity (AZURE_FEDERATED_TOKEN_FILE)",
            Self::AppServiceManagedIdentity => {
                "managed identity (IDENTITY_ENDPOINT, IDENTITY_HEADER)"
            }
            Self::ImdsManagedIdentity => "managed identity (IMDS)",
            Self::AzureCli => "Azure CLI (az account get-access-token)",
        }
    }
}

/// What the chain will do with each source: try it, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Try(SourceKind),
    Skip(SourceKind, String),
}

/// The order of sources for a method, given the settings (pure; see module docs).
pub fn plan(method: AuthMethod, s: &CredentialSettings) -> Vec<Plan> {
    let not_set = |m: Vec<&'static str>| format!("not configured: {} not set", m.join(", "));
    match method {
        AuthMethod::ClientSecret => vec![Plan::Try(SourceKind::ClientSecret)],
        AuthMethod::WorkloadIdentity => vec![Plan::Try(SourceKind::WorkloadIdentity)],
        AuthMethod::AzureCli => vec![Plan::Try(SourceKind::AzureCli)],
        AuthMethod::ManagedIdentity => {
            if s.identity_endpoint.is_some() {
                vec![Plan::Try(SourceKind::AppServiceManagedIdentity)]
            } else {
                vec![Plan::Try(SourceKind::ImdsManagedIdentity)]
            }
        }
        AuthMethod::Auto => {
            let mut out = Vec::new();
            let mut configured = false;
            for (kind, missing) in [
                (SourceKind::ClientSecret, s.missing_for_client_secret()),
                (SourceKind::WorkloadIdentity, s.missing_for_workload()),
                (
                    SourceKind::AppServiceManagedIdentity,
                    s.missing_for_app_service(),
                ),
            ] {
                if missing.is_empty() {
                    configured = true;
                    out.push(Plan::Try(kind));
                } else {
                    out.push(Plan::Skip(kind, not_set(missing)));
                }
            }
            if configured {
                out.push(Plan::Skip(
                    SourceKind::ImdsManagedIdentity,
                    "not tried: another source is configured".into(),
                ));
            } else {
                out.push(Plan::Try(SourceKind::ImdsManagedIdentity));
            }
            out.push(Plan::Skip(
                SourceKind::AzureCli,
                "not tried: only with --auth azure-cli".into(),
            ));
            out
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Nothing produced a token; the message lists every source.
    #[error("no credential worked (--auth {method}); tried in order:\n{report}")]
    NoneWorked {
        method: &'static str,
        report: String,
    },
}

struct Source {
    kind: SourceKind,
    /// A credential, or why it could not be built (missing variable, bad file...).
    credential: Result<Arc<dyn TokenCredential>, String>,
    timeout: Option<Duration>,
}

/// Tries its sources in order; remembers the first that worked so later calls (and the
/// token refreshes of a long export) go straight to it.
pub struct CredentialChain {
    method: AuthMethod,
    sources: Vec<Source>,
    skipped: Vec<(SourceKind, String)>,
    winner: OnceLock<usize>,
}

impl std::fmt::Debug for CredentialChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<SourceKind> = self.sources.iter().map(|s| s.kind).collect();
        f.debug_struct("CredentialChain")
            .field("method", &self.method)
            .field("sources", &kinds)
            .finish_non_exhaustive()
    }
}

fn method_name(m: AuthMethod) -> &'static str {
    match m {
        AuthMethod::Auto => "auto",
        AuthMethod::ManagedIdentity => "managed-identity",
        AuthMethod::WorkloadIdentity => "workload-identity",
        AuthMethod::ClientSecret => "client-secret",
        AuthMethod::AzureCli => "azure-cli",
    }
}

/// Error text from azure_identity, on one line; it names variables and services, and the
/// secrets it could know (client secret, IDENTITY_HEADER) are never part of its messages.
fn one_line(e: &azure_core::Error) -> String {
    let text = e.to_string();
    let text = text
        .split("\nTo troubleshoot")
        .next()
        .unwrap_or(&text)
        .to_string();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn build_source(
    kind: SourceKind,
    s: &CredentialSettings,
    options: &ClientOptions,
    auto: bool,
) -> Source {
    let user_assigned = s.client_id.clone().map(UserAssignedId::ClientId);
    let credential: Result<Arc<dyn TokenCredential>, String> = match kind {
        SourceKind::ClientSecret => {
            let missing = s.missing_for_client_secret();
            if !missing.is_empty() {
                Err(format!("not configured: {} not set", missing.join(", ")))
            } else {
                let secret = s.client_secret.clone().expect("checked above");
                ClientSecretCredential::new(
                    s.tenant_id.as_deref().unwrap_or_default(),
                    s.client_id.clone().unwrap_or_default(),
                    secret.into(),
                    Some(ClientSecretCredentialOptions {
                        client_options: options.clone(),
                    }),
                )
                .map(|c| c as Arc<dyn TokenCredential>)
                .map_err(|e| one_line(&e))
            }
        }
        SourceKind::WorkloadIdentity => {
            let mut o = WorkloadIdentityCredentialOptions::default();
            o.credential_options.client_options = options.clone();
            o.client_id = s.client_id.clone();
            o.tenant_id = s.tenant_id.clone();
            o.token_file_path = s.federated_token_file.clone();
            let missing = s.missing_for_workload();
            if !missing.is_empty() {
                Err(format!("not configured: {} not set", missing.join(", ")))
            } else {
                WorkloadIdentityCredential::new(Some(o))
                    .map(|c| c as Arc<dyn TokenCredential>)
                    .map_err(|e| one_line(&e))
            }
        }
        SourceKind::AppServiceManagedIdentity | SourceKind::ImdsManagedIdentity => {
            let missing = s.missing_for_app_service();
            if kind == SourceKind::AppServiceManagedIdentity && !missing.is_empty() {
                Err(format!("not configured: {} not set", missing.join(", ")))
            } else {
                ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                    user_assigned_id: user_assigned,
                    client_options: options.clone(),
                }))
                .map(|c| c as Arc<dyn TokenCredential>)
                .map_err(|e| one_line(&e))
            }
        }
        SourceKind::AzureCli => AzureCliCredential::new(Some(AzureCliCredentialOptions {
            tenant_id: s.tenant_id.clone(),
            ..Default::default()
        }))
        .map(|c| c as Arc<dyn TokenCredential>)
        .map_err(|e| one_line(&e)),
    };
    let timeout = if auto && kind == SourceKind::ImdsManagedIdentity {
        s.imds_timeout
    } else {
        None
    };
    Source {
        kind,
        credential,
        timeout,
    }
}

impl CredentialChain {
    /// Builds the chain for `method`. Building never talks to the network.
    pub fn new(method: AuthMethod, settings: &CredentialSettings, options: &ClientOptions) -> Self {
        let auto = method == AuthMethod::Auto;
        let mut sources = Vec::new();
        let mut skipped = Vec::new();
        for step in plan(method, settings) {
            match step {
                Plan::Try(kind) => sources.push(build_source(kind, settings, options, auto)),
                Plan::Skip(kind, why) => skipped.push((kind, why)),
            }
        }
        Self {
            method,
            sources,
            skipped,
            winner: OnceLock::new(),
        }
    }

    /// The source that produced the last token, once one has.
    pub fn active_source(&self) -> Option<SourceKind> {
        self.winner.get().map(|&i| self.sources[i].kind)
    }
}

#[async_trait::async_trait]
impl TokenCredential for CredentialChain {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        if let Some(&i) = self.winner.get()
            && let Ok(c) = &self.sources[i].credential
        {
            return c.get_token(scopes, options).await;
        }
        let mut failures: Vec<(SourceKind, String)> = Vec::new();
        for (i, source) in self.sources.iter().enumerate() {
            let credential = match &source.credential {
                Ok(c) => c,
                Err(why) => {
                    failures.push((source.kind, why.clone()));
                    continue;
                }
            };
            let attempt = credential.get_token(scopes, options.clone());
            let result = match source.timeout {
                Some(limit) => match tokio::time::timeout(limit, attempt).await {
                    Ok(r) => r,
                    Err(_) => {
                        failures.push((
                            source.kind,
                            format!(
                                "no answer within {:.1} s (not on an Azure VM?)",
                                limit.as_secs_f64()
                            ),
                        ));
                        continue;
                    }
                },
                None => attempt.await,
            };
            match result {
                Ok(token) => {
                    let _ = self.winner.set(i);
                    tracing::debug!(source = source.kind.describe(), "got a token");
                    return Ok(token);
                }
                Err(e) => failures.push((source.kind, one_line(&e))),
            }
        }
        let report = failure_report(&failures, &self.skipped);
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            CredentialError::NoneWorked {
                method: method_name(self.method),
                report,
            }
            .to_string(),
        ))
    }
}

/// One line per source, tried ones first in order, then the skipped ones.
pub fn failure_report(
    failures: &[(SourceKind, String)],
    skipped: &[(SourceKind, String)],
) -> String {
    let mut lines = Vec::new();
    for (kind, why) in failures.iter().chain(skipped) {
        lines.push(format!("  - {}: {}", kind.describe(), why));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A credential that answers after `delay`, with a token or an error; counts calls.
    #[derive(Debug)]
    struct Scripted {
        delay: Duration,
        ok: bool,
        calls: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl TokenCredential for Scripted {
        async fn get_token(
            &self,
            _: &[&str],
            _: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.ok {
                Ok(AccessToken::new(
                    "tok",
                    azure_core::time::OffsetDateTime::now_utc()
                        + azure_core::time::Duration::hours(1),
                ))
            } else {
                Err(azure_core::Error::with_message(
                    azure_core::error::ErrorKind::Credential,
                    "AADSTS7000215: Invalid client secret provided.",
                ))
            }
        }
    }

    fn scripted(delay_ms: u64, ok: bool) -> Arc<Scripted> {
        Arc::new(Scripted {
            delay: Duration::from_millis(delay_ms),
            ok,
            calls: AtomicUsize::new(0),
        })
    }

    fn chain(sources: Vec<(SourceKind, Arc<Scripted>, Option<Duration>)>) -> CredentialChain {
        CredentialChain {
            method: AuthMethod::Auto,
            sources: sources
                .into_iter()
                .map(|(kind, c, timeout)| Source {
                    kind,
                    credential: Ok(c as Arc<dyn TokenCredential>),
                    timeout,
                })
                .collect(),
            skipped: vec![(
                SourceKind::AzureCli,
                "not tried: only with --auth azure-cli".into(),
            )],
            winner: OnceLock::new(),
        }
    }

    #[tokio::test]
    async fn imds_is_bounded_in_time_and_reported() {
        let slow = scripted(5_000, true);
        let c = chain(vec![(
            SourceKind::ImdsManagedIdentity,
            slow,
            Some(Duration::from_millis(50)),
        )]);
        let started = std::time::Instant::now();
        let err = c
            .get_token(&["s/.default"], None)
            .await
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            err.contains("managed identity (IMDS): no answer within 0.1 s"),
            "{err}"
        );
        assert!(err.contains("Azure CLI"), "{err}");
    }

    #[tokio::test]
    async fn first_working_source_wins_and_is_remembered() {
        let bad = scripted(0, false);
        let good = scripted(0, true);
        let c = chain(vec![
            (SourceKind::ClientSecret, bad.clone(), None),
            (SourceKind::AppServiceManagedIdentity, good.clone(), None),
        ]);
        c.get_token(&["s/.default"], None).await.unwrap();
        c.get_token(&["s/.default"], None).await.unwrap();
        assert_eq!(bad.calls.load(Ordering::SeqCst), 1);
        assert_eq!(good.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            c.active_source(),
            Some(SourceKind::AppServiceManagedIdentity)
        );
    }

    #[tokio::test]
    async fn all_failures_are_listed_in_order() {
        let c = chain(vec![
            (SourceKind::ClientSecret, scripted(0, false), None),
            (SourceKind::WorkloadIdentity, scripted(0, false), None),
        ]);
        let err = c
            .get_token(&["s/.default"], None)
            .await
            .unwrap_err()
            .to_string();
        let sp = err.find("service principal").unwrap();
        let wi = err.find("workload identity").unwrap();
        assert!(sp < wi, "{err}");
        assert!(err.contains("AADSTS7000215"), "{err}");
    }

    fn settings() -> CredentialSettings {
        CredentialSettings::default()
    }

    fn tried(p: &[Plan]) -> Vec<SourceKind> {
        p.iter()
            .filter_map(|s| match s {
                Plan::Try(k) => Some(*k),
                Plan::Skip(..) => None,
            })
            .collect()
    }

    #[test]
    fn auto_with_nothing_configured_tries_only_imds() {
        let p = plan(AuthMethod::Auto, &settings());
        assert_eq!(tried(&p), vec![SourceKind::ImdsManagedIdentity]);
        // Every source still appears, with the reason it was skipped.
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn auto_order_is_secret_workload_appservice_and_skips_imds() {
        let s = CredentialSettings {
            tenant_id: Some("t".into()),
            client_id: Some("c".into()),
            client_secret: Some(Secret::new("s")),
            federated_token_file: Some("/var/run/token".into()),
            identity_endpoint: Some("http://127.0.0.1:1/msi".into()),
            identity_header_set: true,
            imds_timeout: None,
        };
        let p = plan(AuthMethod::Auto, &s);
        assert_eq!(
            tried(&p),
            vec![
                SourceKind::ClientSecret,
                SourceKind::WorkloadIdentity,
                SourceKind::AppServiceManagedIdentity
            ]
        );
        assert!(p.contains(&Plan::Skip(
            SourceKind::ImdsManagedIdentity,
            "not tried: another source is configured".into()
        )));
    }

    #[test]
    fn partial_service_principal_names_the_missing_variable() {
        let s = CredentialSettings {
            tenant_id: Some("t".into()),
            client_id: Some("c".into()),
            ..settings()
        };
        let p = plan(AuthMethod::Auto, &s);
        assert!(p.contains(&Plan::Skip(
            SourceKind::ClientSecret,
            "not configured: AZURE_CLIENT_SECRET not set".into()
        )));
    }

    #[test]
    fn app_service_needs_both_variables() {
        let s = CredentialSettings {
            identity_endpoint: Some("http://127.0.0.1:1/msi".into()),
            ..settings()
        };
        let p = plan(AuthMethod::Auto, &s);
        assert_eq!(tried(&p), vec![SourceKind::ImdsManagedIdentity]);
        assert!(p.iter().any(|x| matches!(x,
            Plan::Skip(SourceKind::AppServiceManagedIdentity, why) if why.contains("IDENTITY_HEADER"))));
    }

    #[test]
    fn azure_cli_only_when_asked() {
        assert!(!tried(&plan(AuthMethod::Auto, &settings())).contains(&SourceKind::AzureCli));
        assert_eq!(
            tried(&plan(AuthMethod::AzureCli, &settings())),
            vec![SourceKind::AzureCli]
        );
    }

    #[test]
    fn managed_identity_picks_app_service_when_endpoint_set() {
        let s = CredentialSettings {
            identity_endpoint: Some("http://127.0.0.1:1/msi".into()),
            identity_header_set: true,
            ..settings()
        };
        assert_eq!(
            tried(&plan(AuthMethod::ManagedIdentity, &s)),
            vec![SourceKind::AppServiceManagedIdentity]
        );
        assert_eq!(
            tried(&plan(AuthMethod::ManagedIdentity, &settings())),
            vec![SourceKind::ImdsManagedIdentity]
        );
    }

    #[test]
    fn settings_debug_hides_the_client_secret() {
        let s = CredentialSettings {
            client_secret: Some(Secret::new("sup3r-s3cret-value")),
            ..settings()
        };
        assert!(!format!("{s:?}").contains("sup3r-s3cret-value"));
    }

    #[tokio::test]
    async fn explicit_client_secret_without_env_fails_with_report_and_no_secret() {
        let s = CredentialSettings {
            client_id: Some("c".into()),
            client_secret: Some(Secret::new("sup3r-s3cret-value")),
            ..settings()
        };
        let options = ClientOptions::default();
        let chain = CredentialChain::new(AuthMethod::ClientSecret, &s, &options);
        let err = chain
            .get_token(&["https://management.azure.com/.default"], None)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("AZURE_TENANT_ID not set"), "{text}");
        assert!(text.contains("--auth client-secret"), "{text}");
        assert!(!text.contains("sup3r-s3cret-value"), "{text}");
        assert!(!format!("{chain:?}").contains("sup3r-s3cret-value"));
        assert_eq!(chain.active_source(), None);
    }
}
