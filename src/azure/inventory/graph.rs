//! Runs a Resource Graph query over many subscriptions and returns every row: at most
//! [`BATCH`] subscriptions per query (Microsoft's guidance), [`TOP`] rows per page, pages
//! followed by `$skipToken` (given only when `id` is projected; the queries sort by it so
//! pages neither repeat nor drop rows), each page paced on the user quota ([`Pacer`]) and
//! sent through the ARM client (retries, 429 Retry-After, request counts).

use std::collections::HashSet;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::pace::Pacer;
use crate::azure::arm::{ArmClient, ArmError};

/// Subscriptions per query.
pub const BATCH: usize = 300;
/// Rows per page: Resource Graph's maximum.
pub const TOP: usize = 1000;
/// Pages one query may have before it is called a loop (100 million rows).
pub const MAX_PAGES: usize = 100_000;

const OPERATION: &str = "query Resource Graph";

/// One page as Resource Graph answers it (`resultFormat: objectArray`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphPage<T> {
    #[serde(default = "Vec::new")]
    data: Vec<T>,
    #[serde(default, rename = "$skipToken")]
    skip_token: Option<String>,
    #[serde(default)]
    result_truncated: Option<String>,
}

/// Every row of `query` over `subscriptions`, batch after batch; `on_page(rows so far)`.
pub async fn query_all<T: DeserializeOwned>(
    arm: &ArmClient,
    pacer: &Pacer,
    subscriptions: &[String],
    query: &str,
    mut on_page: impl FnMut(usize),
) -> Result<Vec<T>, ArmError> {
    let mut rows = Vec::new();
    for batch in subscriptions.chunks(BATCH) {
        let mut seen = HashSet::new();
        let mut token: Option<String> = None;
        loop {
            let mut options = json!({"$top": TOP, "resultFormat": "objectArray"});
            if let Some(t) = &token {
                options["$skipToken"] = json!(t);
            }
            let body = json!({"subscriptions": batch, "query": query, "options": options});
            pacer.take().await;
            let answer = arm.resource_graph::<GraphPage<T>>(body).await;
            let quota = answer.as_ref().map(|(_, q)| *q).unwrap_or_default();
            pacer.record(quota).await;
            let (page, _) = answer?;
            rows.extend(page.data);
            on_page(rows.len());
            token = match page.skip_token.filter(|t| !t.is_empty()) {
                Some(t) => Some(next_token(&mut seen, t)?),
                None if is_true(page.result_truncated.as_deref()) => {
                    return Err(bad_token(
                        "",
                        "the result is truncated and has no $skipToken to continue",
                    ));
                }
                None => break,
            };
        }
    }
    Ok(rows)
}

fn is_true(v: Option<&str>) -> bool {
    v.is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn bad_token(token: &str, reason: &str) -> ArmError {
    ArmError::BadNextLink {
        operation: OPERATION,
        link: format!("$skipToken {token}"),
        reason: reason.to_string(),
    }
}

/// The next token, refused when it was given before (a loop) or after too many pages.
fn next_token(seen: &mut HashSet<String>, token: String) -> Result<String, ArmError> {
    if seen.len() >= MAX_PAGES {
        return Err(bad_token(&token, &format!("more than {MAX_PAGES} pages")));
    }
    if !seen.insert(token.clone()) {
        return Err(bad_token(
            &token,
            "the server sent this token before (paging loop)",
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_token_is_a_loop() {
        let mut seen = HashSet::new();
        assert_eq!(next_token(&mut seen, "a".into()).unwrap(), "a");
        assert_eq!(next_token(&mut seen, "b".into()).unwrap(), "b");
        let err = next_token(&mut seen, "a".into()).unwrap_err();
        assert!(err.to_string().contains("paging loop"), "{err}");
    }

    #[test]
    fn pages_read_with_or_without_token() {
        let p: GraphPage<serde_json::Value> = serde_json::from_value(json!({
            "totalRecords": 3, "count": 1, "resultTruncated": "false",
            "$skipToken": "ew0K", "data": [{"id": "x"}]
        }))
        .unwrap();
        assert_eq!(p.skip_token.as_deref(), Some("ew0K"));
        assert_eq!(p.data.len(), 1);
        let last: GraphPage<serde_json::Value> =
            serde_json::from_value(json!({"count": 0, "data": []})).unwrap();
        assert!(last.skip_token.is_none() && !is_true(last.result_truncated.as_deref()));
    }
}
