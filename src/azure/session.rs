//! Everything a command needs to call Azure, built once: the cloud, the shared transport
//! (with `--ca-bundle`), the credential chain and the ARM client. The export work and the
//! transfer engine take their `ClientOptions` from here, so they trust the same roots and
//! authenticate the same way.

use std::path::Path;
use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, Transport};

use super::arm::ArmClient;
use super::cloud::Cloud;
use super::credential::{AuthMethod, CredentialChain, CredentialSettings};
use super::http::{self, HttpError};

/// The Entra ID scope of Azure Storage (blob data plane).
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// A credential that could not get a token: which service it was for and why (the chain's
/// message lists what was tried). Always a configuration problem for the caller.
#[derive(Debug, thiserror::Error)]
#[error("cannot authenticate to {service}: {source}")]
pub struct SignInError {
    /// "Azure" (ARM) or "Azure Storage".
    pub service: &'static str,
    #[source]
    pub source: azure_core::Error,
}

#[derive(Debug)]
pub struct AzureSession {
    pub cloud: Cloud,
    pub transport: Transport,
    pub credential: Arc<CredentialChain>,
    pub arm: ArmClient,
}

impl AzureSession {
    pub fn new(
        cloud: Cloud,
        method: AuthMethod,
        settings: &CredentialSettings,
        ca_bundle: Option<&Path>,
    ) -> Result<Self, HttpError> {
        let transport = http::transport(ca_bundle)?;
        let options = http::client_options(&transport, &cloud);
        let credential = Arc::new(CredentialChain::new(method, settings, &options));
        let arm = ArmClient::new(
            cloud.arm_endpoint.clone(),
            credential.clone() as Arc<dyn TokenCredential>,
            cloud.arm_scope(),
            options,
        );
        Ok(Self {
            cloud,
            transport,
            credential,
            arm,
        })
    }

    /// Options for other Azure clients (blob storage): same transport and cloud.
    pub fn client_options(&self) -> ClientOptions {
        http::client_options(&self.transport, &self.cloud)
    }

    /// Gets a storage token once, before a download that needs one (a blob URL without
    /// SAS), so a credential problem is one clear usage error (exit 2).
    pub async fn check_storage_credential(&self) -> Result<(), SignInError> {
        self.credential
            .get_token(&[STORAGE_SCOPE], None)
            .await
            .map(drop)
            .map_err(|source| SignInError {
                service: "Azure Storage",
                source,
            })
    }

    /// Gets an ARM token once, before any listing, so that a credential problem is one
    /// clear usage error (exit 2) listing what was tried, not a failure halfway through.
    pub async fn check_credential(&self) -> Result<(), SignInError> {
        let scope = self.cloud.arm_scope();
        self.credential
            .get_token(&[scope.as_str()], None)
            .await
            .map(drop)
            .map_err(|source| SignInError {
                service: "Azure",
                source,
            })
    }
}
