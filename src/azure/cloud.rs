//! Which Azure cloud to talk to: the ARM endpoint, the Entra ID authority host, the
//! token audience, and the blob storage suffix that bounds where storage tokens may go. The national clouds are fixed tables; `custom` (Azure Stack Hub, test
//! fakes) takes them from flags. Everything is validated here, before any request, so a
//! typo is a usage error (exit 2) rather than a network failure later.

use std::sync::Arc;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::http::Url;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudName {
    Public,
    China,
    Usgov,
    Custom,
}

/// A resolved cloud: where ARM is, where tokens come from, and for which audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cloud {
    pub name: CloudName,
    /// ARM base URL, no trailing slash in its path.
    pub arm_endpoint: Url,
    pub authority_host: Url,
    /// The resource the ARM token is for; the scope is `{audience}/.default`.
    pub arm_audience: String,
    /// Blob service host suffix (`blob.core.windows.net`): an Entra ID storage token is
    /// sent only to hosts under it. None in a custom cloud without `--storage-suffix`:
    /// then no storage token is sent anywhere.
    pub storage_suffix: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error(
        "--cloud custom needs --arm-endpoint URL (for example https://management.local.azurestack.external)"
    )]
    MissingArmEndpoint,
    #[error("{flag} is only used with --cloud custom (the {cloud:?} cloud has fixed endpoints)")]
    OnlyForCustom {
        flag: &'static str,
        cloud: CloudName,
    },
    #[error("{flag} {value:?} is not a valid URL: {reason}")]
    BadUrl {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("{flag} {value:?} must use https (bearer tokens are never sent in clear text)")]
    NotHttps { flag: &'static str, value: String },
    #[error(
        "--storage-suffix {0:?} is not a host name suffix (like blob.core.windows.net: letters, digits, '-' and '.' only)"
    )]
    BadStorageSuffix(String),
}

struct Fixed {
    arm: &'static str,
    authority: &'static str,
    storage: &'static str,
}

fn fixed(name: CloudName) -> Option<Fixed> {
    match name {
        CloudName::Public => Some(Fixed {
            arm: "https://management.azure.com",
            authority: "https://login.microsoftonline.com",
            storage: "blob.core.windows.net",
        }),
        CloudName::China => Some(Fixed {
            arm: "https://management.chinacloudapi.cn",
            authority: "https://login.chinacloudapi.cn",
            storage: "blob.core.chinacloudapi.cn",
        }),
        CloudName::Usgov => Some(Fixed {
            arm: "https://management.usgovcloudapi.net",
            authority: "https://login.microsoftonline.us",
            storage: "blob.core.usgovcloudapi.net",
        }),
        CloudName::Custom => None,
    }
}

fn https_url(flag: &'static str, value: &str) -> Result<Url, CloudError> {
    let url = Url::parse(value).map_err(|e| CloudError::BadUrl {
        flag,
        value: value.to_string(),
        reason: e.to_string(),
    })?;
    if url.scheme() != "https" {
        return Err(CloudError::NotHttps {
            flag,
            value: value.to_string(),
        });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(CloudError::BadUrl {
            flag,
            value: value.to_string(),
            reason: "no host".into(),
        });
    }
    Ok(url)
}

impl Cloud {
    /// Resolves `--cloud` and its custom-only flags.
    pub fn resolve(
        name: CloudName,
        arm_endpoint: Option<&str>,
        authority_host: Option<&str>,
        arm_audience: Option<&str>,
    ) -> Result<Self, CloudError> {
        if let Some(table) = fixed(name) {
            for (flag, given) in [
                ("--arm-endpoint", arm_endpoint),
                ("--authority-host", authority_host),
                ("--arm-audience", arm_audience),
            ] {
                if given.is_some() {
                    return Err(CloudError::OnlyForCustom { flag, cloud: name });
                }
            }
            let arm_endpoint = Url::parse(table.arm).expect("static URL");
            return Ok(Self {
                name,
                arm_audience: table.arm.to_string(),
                arm_endpoint,
                authority_host: Url::parse(table.authority).expect("static URL"),
                storage_suffix: Some(table.storage.to_string()),
            });
        }
        let arm = arm_endpoint.ok_or(CloudError::MissingArmEndpoint)?;
        let arm_endpoint = https_url("--arm-endpoint", arm)?;
        let authority_host = https_url(
            "--authority-host",
            authority_host.unwrap_or("https://login.microsoftonline.com"),
        )?;
        // Azure Stack Hub's ARM audience differs from its endpoint; elsewhere they agree.
        let arm_audience = match arm_audience {
            Some(a) => https_url("--arm-audience", a)?.to_string(),
            None => arm_endpoint.to_string(),
        };
        Ok(Self {
            name,
            arm_endpoint,
            authority_host,
            arm_audience: arm_audience.trim_end_matches('/').to_string(),
            storage_suffix: None,
        })
    }

    /// Applies `--storage-suffix` (custom clouds only; the others have theirs).
    pub fn with_storage_suffix(mut self, suffix: Option<&str>) -> Result<Self, CloudError> {
        let Some(suffix) = suffix else {
            return Ok(self);
        };
        if self.name != CloudName::Custom {
            return Err(CloudError::OnlyForCustom {
                flag: "--storage-suffix",
                cloud: self.name,
            });
        }
        let s = suffix.trim_start_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if s.is_empty() || s.len() > 253 || !s.split('.').all(label_ok) {
            return Err(CloudError::BadStorageSuffix(suffix.to_string()));
        }
        self.storage_suffix = Some(s);
        Ok(self)
    }

    /// True if `host` is the storage suffix or a name under it (`acct.blob.core...`),
    /// compared label by label: `evilblob.core.windows.net` and
    /// `blob.core.windows.net.example` are not under `blob.core.windows.net`.
    pub fn storage_host_allowed(&self, host: &str) -> bool {
        let Some(suffix) = &self.storage_suffix else {
            return false;
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        host == *suffix
            || host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
    }

    /// The OAuth scope for ARM tokens.
    pub fn arm_scope(&self) -> String {
        format!("{}/.default", self.arm_audience.trim_end_matches('/'))
    }

    /// The SDK's view of this cloud, for azure_identity's authority host.
    pub fn sdk_configuration(&self) -> Arc<CloudConfiguration> {
        Arc::new(match self.name {
            CloudName::Public => CloudConfiguration::AzurePublic,
            CloudName::China => CloudConfiguration::AzureChina,
            CloudName::Usgov => CloudConfiguration::AzureGovernment,
            CloudName::Custom => {
                let mut custom = CustomConfiguration::default();
                custom.authority_host = self
                    .authority_host
                    .as_str()
                    .trim_end_matches('/')
                    .to_string();
                CloudConfiguration::Custom(custom)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_cloud_scope() {
        let c = Cloud::resolve(CloudName::Public, None, None, None).unwrap();
        assert_eq!(c.arm_scope(), "https://management.azure.com/.default");
        assert_eq!(c.arm_endpoint.as_str(), "https://management.azure.com/");
    }

    #[test]
    fn national_clouds_have_their_hosts() {
        let cn = Cloud::resolve(CloudName::China, None, None, None).unwrap();
        assert_eq!(cn.authority_host.host_str(), Some("login.chinacloudapi.cn"));
        let us = Cloud::resolve(CloudName::Usgov, None, None, None).unwrap();
        assert_eq!(
            us.arm_scope(),
            "https://management.usgovcloudapi.net/.default"
        );
    }

    #[test]
    fn custom_cloud_uses_flags_and_audience() {
        let c = Cloud::resolve(
            CloudName::Custom,
            Some("https://management.local.azurestack.external/"),
            Some("https://adfs.local.azurestack.external/adfs"),
            Some("https://management.contoso.onmicrosoft.com/81e5b5e5"),
        )
        .unwrap();
        assert_eq!(
            c.arm_scope(),
            "https://management.contoso.onmicrosoft.com/81e5b5e5/.default"
        );
        match c.sdk_configuration().as_ref() {
            CloudConfiguration::Custom(cfg) => {
                assert_eq!(
                    cfg.authority_host,
                    "https://adfs.local.azurestack.external/adfs"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn custom_audience_defaults_to_endpoint() {
        let c = Cloud::resolve(
            CloudName::Custom,
            Some("https://127.0.0.1:8443"),
            None,
            None,
        )
        .unwrap();
        assert_eq!(c.arm_scope(), "https://127.0.0.1:8443/.default");
    }

    #[test]
    fn custom_without_endpoint_is_refused() {
        assert!(matches!(
            Cloud::resolve(CloudName::Custom, None, None, None),
            Err(CloudError::MissingArmEndpoint)
        ));
    }

    #[test]
    fn endpoint_flags_need_custom() {
        let e = Cloud::resolve(CloudName::Public, Some("https://x"), None, None).unwrap_err();
        assert!(matches!(
            e,
            CloudError::OnlyForCustom {
                flag: "--arm-endpoint",
                ..
            }
        ));
        let e = Cloud::resolve(CloudName::China, None, Some("https://x"), None).unwrap_err();
        assert!(matches!(
            e,
            CloudError::OnlyForCustom {
                flag: "--authority-host",
                ..
            }
        ));
    }

    #[test]
    fn storage_tokens_go_only_under_the_clouds_storage_suffix() {
        let public = Cloud::resolve(CloudName::Public, None, None, None).unwrap();
        assert!(public.storage_host_allowed("oldstorage.blob.core.windows.net"));
        assert!(public.storage_host_allowed("OldStorage.BLOB.core.windows.net."));
        for other in [
            "evilblob.core.windows.net",
            "blob.core.windows.net.example.com",
            "oldstorage.blob.core.chinacloudapi.cn",
            "127.0.0.1",
            "",
            ".blob.core.windows.net",
        ] {
            assert!(!public.storage_host_allowed(other), "{other}");
        }
        let cn = Cloud::resolve(CloudName::China, None, None, None).unwrap();
        assert!(cn.storage_host_allowed("a.blob.core.chinacloudapi.cn"));
        let us = Cloud::resolve(CloudName::Usgov, None, None, None).unwrap();
        assert!(us.storage_host_allowed("a.blob.core.usgovcloudapi.net"));
        assert!(!us.storage_host_allowed("a.blob.core.windows.net"));

        // A custom cloud: none until --storage-suffix names one.
        let custom = || Cloud::resolve(CloudName::Custom, Some("https://h"), None, None).unwrap();
        assert!(!custom().storage_host_allowed("a.blob.local.azurestack.external"));
        let hub = custom()
            .with_storage_suffix(Some("blob.local.azurestack.external"))
            .unwrap();
        assert!(hub.storage_host_allowed("a.blob.local.azurestack.external"));
        assert!(!hub.storage_host_allowed("a.blob.core.windows.net"));
        for bad in [
            "",
            "https://blob.x",
            "blob.x/",
            "blob..x",
            "a b",
            "blob.x:443",
        ] {
            let e = custom().with_storage_suffix(Some(bad)).unwrap_err();
            assert!(matches!(e, CloudError::BadStorageSuffix(_)), "{bad:?}: {e}");
        }
        let e = public.with_storage_suffix(Some("blob.x")).unwrap_err();
        assert!(
            matches!(
                e,
                CloudError::OnlyForCustom {
                    flag: "--storage-suffix",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn plain_http_and_garbage_are_refused() {
        let e =
            Cloud::resolve(CloudName::Custom, Some("http://127.0.0.1:1"), None, None).unwrap_err();
        assert!(matches!(e, CloudError::NotHttps { .. }), "{e}");
        let e = Cloud::resolve(CloudName::Custom, Some("not a url"), None, None).unwrap_err();
        assert!(matches!(e, CloudError::BadUrl { .. }), "{e}");
        let e = Cloud::resolve(
            CloudName::Custom,
            Some("https://a"),
            Some("http://login"),
            None,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                CloudError::NotHttps {
                    flag: "--authority-host",
                    ..
                }
            ),
            "{e}"
        );
    }
}
