//! Follows ARM's `nextLink` until the last page. The link is used exactly as ARM sent it
//! (its skip token may contain `+`, `/` and `=`; re-encoding the query would corrupt it),
//! only on the same origin as the first request (a bearer token must not follow a link to
//! another host), and never twice (a server that repeats a link would loop forever).

use std::collections::HashSet;
use std::future::Future;

use azure_core::http::Url;

use super::error::ArmError;
use super::models::Page;

/// Pages a single list may have before we call it a loop (1000 items per page on ARM).
pub const MAX_PAGES: usize = 100_000;

/// Checks and parses a `nextLink` against the first request's URL.
pub fn next_url(operation: &'static str, first: &Url, link: &str) -> Result<Url, ArmError> {
    let bad = |reason: &str| ArmError::BadNextLink {
        operation,
        link: link.to_string(),
        reason: reason.to_string(),
    };
    let url = Url::parse(link).map_err(|e| bad(&format!("not an absolute URL ({e})")))?;
    if url.scheme() != first.scheme()
        || url.host_str() != first.host_str()
        || url.port_or_known_default() != first.port_or_known_default()
    {
        return Err(bad(&format!(
            "it leaves {} (bearer tokens stay on the ARM endpoint)",
            first.origin().ascii_serialization()
        )));
    }
    Ok(url)
}

/// Fetches every page starting at `first`, calling `on_page(items_so_far)` after each.
pub async fn collect_pages<T, F, Fut>(
    operation: &'static str,
    first: Url,
    mut fetch: F,
    mut on_page: impl FnMut(usize),
) -> Result<Vec<T>, ArmError>
where
    F: FnMut(Url) -> Fut,
    Fut: Future<Output = Result<Page<T>, ArmError>>,
{
    let mut items = Vec::new();
    let mut seen = HashSet::new();
    let mut url = first.clone();
    loop {
        if !seen.insert(url.as_str().to_string()) {
            return Err(ArmError::BadNextLink {
                operation,
                link: url.to_string(),
                reason: "the server sent this link before (paging loop)".into(),
            });
        }
        if seen.len() > MAX_PAGES {
            return Err(ArmError::BadNextLink {
                operation,
                link: url.to_string(),
                reason: format!("more than {MAX_PAGES} pages"),
            });
        }
        let page = fetch(url).await?;
        items.extend(page.value);
        on_page(items.len());
        match page.next_link.as_deref().map(str::trim) {
            None | Some("") => return Ok(items),
            Some(link) => url = next_url(operation, &first, link)?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    const BASE: &str = "https://management.azure.com/subscriptions/s/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01";

    fn page(items: &[u32], next: Option<&str>) -> Page<u32> {
        Page {
            value: items.to_vec(),
            next_link: next.map(str::to_string),
        }
    }

    async fn run(pages: HashMap<String, Page<u32>>) -> (Result<Vec<u32>, ArmError>, Vec<String>) {
        let asked = Mutex::new(Vec::new());
        let result = collect_pages(
            "list VMs",
            Url::parse(BASE).unwrap(),
            |url: Url| {
                asked.lock().unwrap().push(url.as_str().to_string());
                let p = pages.get(url.as_str()).cloned();
                async move {
                    p.ok_or_else(|| ArmError::Decode {
                        operation: "list VMs",
                        resource: "test".into(),
                        message: format!("no page at {url}"),
                    })
                }
            },
            |_| {},
        )
        .await;
        (result, asked.into_inner().unwrap())
    }

    #[tokio::test]
    async fn follows_next_links_and_keeps_skip_tokens_intact() {
        let second = format!("{BASE}&%24skiptoken=ab+c/d==");
        let third = format!("{BASE}&%24skiptoken=zz%2Bq%2F%3D");
        let mut pages = HashMap::new();
        pages.insert(BASE.to_string(), page(&[1, 2], Some(&second)));
        pages.insert(second.clone(), page(&[3], Some(&third)));
        pages.insert(third.clone(), page(&[], Some("")));
        let (result, asked) = run(pages).await;
        assert_eq!(result.unwrap(), vec![1, 2, 3]);
        assert_eq!(asked, vec![BASE.to_string(), second, third]);
    }

    #[tokio::test]
    async fn single_page_without_next_link() {
        let mut pages = HashMap::new();
        pages.insert(BASE.to_string(), page(&[7], None));
        assert_eq!(run(pages).await.0.unwrap(), vec![7]);
    }

    #[tokio::test]
    async fn a_repeated_link_is_a_loop_error() {
        let mut pages = HashMap::new();
        pages.insert(BASE.to_string(), page(&[1], Some(BASE)));
        let err = run(pages).await.0.unwrap_err();
        assert!(err.to_string().contains("paging loop"), "{err}");
    }

    #[tokio::test]
    async fn a_link_to_another_host_is_refused() {
        let mut pages = HashMap::new();
        pages.insert(
            BASE.to_string(),
            page(&[1], Some("https://evil.example/steal?x=1")),
        );
        let (result, asked) = run(pages).await;
        let err = result.unwrap_err();
        assert!(matches!(err, ArmError::BadNextLink { .. }), "{err}");
        assert_eq!(asked.len(), 1);
    }

    #[test]
    fn relative_or_downgraded_links_are_refused() {
        let first = Url::parse(BASE).unwrap();
        assert!(next_url("op", &first, "/subscriptions/s?x").is_err());
        assert!(next_url("op", &first, "http://management.azure.com/x").is_err());
        assert!(next_url("op", &first, "https://management.azure.com:444/x").is_err());
        assert!(next_url("op", &first, "https://management.azure.com:443/x").is_ok());
    }
}
