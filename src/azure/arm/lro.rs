//! Long-running operations (ARM's async pattern): after a 201/202, poll the
//! `Azure-AsyncOperation` URL if there is one (its body says InProgress, Succeeded, Failed
//! or Canceled), else the `Location` URL (202 while running, then 200/204 with the result).
//! Retry-After is honoured (capped); the whole wait is bounded; Failed and Canceled carry
//! ARM's error code and message. The transport is a closure and so is the sleep, so every
//! state can be tested without a server or real waiting.

use std::future::Future;
use std::time::Duration;

use azure_core::http::Url;
use serde::Deserialize;

use super::error::{ArmError, ErrorDetail};
use super::pager::next_url;

/// What one poll (or the initial response) told us.
#[derive(Debug, Clone, Default)]
pub struct LroResponse {
    pub status: u16,
    pub async_operation: Option<String>,
    pub location: Option<String>,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

/// Where the result of a finished operation is read from (ARM's "final-state-via").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalState {
    /// PUT: GET the resource itself.
    OriginalUri(Url),
    /// POST with a result (grant access): the Location URL.
    Location,
    /// DELETE, power actions: no result body.
    None,
}

#[derive(Debug, Clone)]
pub struct LroSettings {
    /// Poll interval when the server sends no Retry-After.
    pub default_interval: Duration,
    /// Upper bound for a server's Retry-After.
    pub max_interval: Duration,
    /// The whole wait, after which the operation is reported as timed out.
    pub timeout: Duration,
}

impl Default for LroSettings {
    fn default() -> Self {
        Self {
            default_interval: Duration::from_secs(2),
            max_interval: Duration::from_secs(60),
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

#[derive(Debug, Deserialize)]
struct AsyncOperationBody {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<ErrorDetail>,
}

/// The state an Azure-AsyncOperation body reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsyncStatus {
    Running,
    Succeeded,
    Failed(ErrorDetail),
    Canceled(ErrorDetail),
}

/// Reads an Azure-AsyncOperation status body. Unknown states ("Accepted", "Creating"...)
/// count as still running: only the three terminal states end the wait.
pub fn async_status(body: &[u8]) -> Result<AsyncStatus, String> {
    let b: AsyncOperationBody =
        serde_json::from_slice(body).map_err(|e| format!("operation status body: {e}"))?;
    let status = b.status.ok_or("operation status body has no status")?;
    Ok(match status.to_ascii_lowercase().as_str() {
        "succeeded" => AsyncStatus::Succeeded,
        "failed" => AsyncStatus::Failed(b.error.unwrap_or_default()),
        "canceled" | "cancelled" => AsyncStatus::Canceled(b.error.unwrap_or_default()),
        _ => AsyncStatus::Running,
    })
}

enum Mode {
    AsyncOperation(Url),
    Location(Url),
}

/// What one poll found.
enum Poll {
    Running(Option<Duration>),
    Done(Option<Vec<u8>>),
    /// Succeeded, and the result is read from this Location at once.
    FollowLocation(Url),
}

/// The operation and resource every error of one wait names.
#[derive(Clone, Copy)]
struct Op<'a> {
    operation: &'static str,
    resource: &'a str,
}

impl Op<'_> {
    fn decode(self, message: String) -> ArmError {
        ArmError::Decode {
            operation: self.operation,
            resource: self.resource.to_string(),
            message,
        }
    }
}

/// Drives an operation from its initial (successful) response to its result body, if any.
#[allow(clippy::too_many_arguments)]
pub async fn wait<G, GFut, S, SFut>(
    operation: &'static str,
    resource: &str,
    origin: &Url,
    initial: LroResponse,
    final_state: FinalState,
    settings: &LroSettings,
    mut get: G,
    mut sleep: S,
) -> Result<Option<Vec<u8>>, ArmError>
where
    G: FnMut(Url) -> GFut,
    GFut: Future<Output = Result<LroResponse, ArmError>>,
    S: FnMut(Duration) -> SFut,
    SFut: Future<Output = ()>,
{
    let op = Op {
        operation,
        resource,
    };
    let link = |l: &str| next_url(operation, origin, l);
    let location = initial.location.as_deref().map(link).transpose()?;
    let mut mode = match (&initial.async_operation, &location) {
        (Some(a), _) => Mode::AsyncOperation(link(a)?),
        (None, Some(l)) => Mode::Location(l.clone()),
        (None, None) if initial.status == 202 => {
            return Err(op.decode("202 Accepted without Azure-AsyncOperation or Location".into()));
        }
        (None, None) => return Ok(non_empty(initial.body)),
    };
    let started = std::time::Instant::now();
    let mut slept = Duration::ZERO;
    let mut retry_after = initial.retry_after;
    loop {
        let delay = retry_after
            .unwrap_or(settings.default_interval)
            .min(settings.max_interval);
        if slept.max(started.elapsed()) + delay > settings.timeout {
            return Err(ArmError::OperationTimeout {
                operation,
                resource: resource.to_string(),
                waited_secs: slept.max(started.elapsed()).as_secs(),
            });
        }
        sleep(delay).await;
        slept += delay;
        let poll = match &mode {
            Mode::AsyncOperation(url) => {
                poll_async_operation(op, url, &final_state, location.as_ref(), &mut get).await?
            }
            Mode::Location(url) => poll_location(op, url, &mut get).await?,
        };
        match poll {
            Poll::Running(after) => retry_after = after,
            Poll::Done(body) => return Ok(body),
            Poll::FollowLocation(url) => {
                // Read at once, without another sleep; a 202 there goes on polling it.
                match poll_location(op, &url, &mut get).await? {
                    Poll::Running(after) => retry_after = after,
                    Poll::Done(body) => return Ok(body),
                    Poll::FollowLocation(_) => unreachable!("a Location poll never follows"),
                }
                mode = Mode::Location(url);
            }
        }
    }
}

/// One GET of the Azure-AsyncOperation URL; on success, the result as `final_state` says.
async fn poll_async_operation<G, GFut>(
    op: Op<'_>,
    url: &Url,
    final_state: &FinalState,
    location: Option<&Url>,
    get: &mut G,
) -> Result<Poll, ArmError>
where
    G: FnMut(Url) -> GFut,
    GFut: Future<Output = Result<LroResponse, ArmError>>,
{
    let r = get(url.clone()).await?;
    match async_status(&r.body).map_err(|m| op.decode(m))? {
        AsyncStatus::Running => Ok(Poll::Running(r.retry_after)),
        AsyncStatus::Failed(d) => Err(failed(op.operation, op.resource, "Failed", d)),
        AsyncStatus::Canceled(d) => Err(failed(op.operation, op.resource, "Canceled", d)),
        AsyncStatus::Succeeded => match (final_state, location) {
            (FinalState::None, _) => Ok(Poll::Done(None)),
            (FinalState::OriginalUri(u), _) => {
                let r = get(u.clone()).await?;
                Ok(Poll::Done(non_empty(r.body)))
            }
            (FinalState::Location, Some(l)) => Ok(Poll::FollowLocation(l.clone())),
            // Some operations put the result in the status body.
            (FinalState::Location, None) => Ok(Poll::Done(non_empty(r.body))),
        },
    }
}

/// One GET of the Location URL: 202 while running, the result once done.
async fn poll_location<G, GFut>(op: Op<'_>, url: &Url, get: &mut G) -> Result<Poll, ArmError>
where
    G: FnMut(Url) -> GFut,
    GFut: Future<Output = Result<LroResponse, ArmError>>,
{
    let r = get(url.clone()).await?;
    match r.status {
        202 => Ok(Poll::Running(r.retry_after)),
        200 | 201 => Ok(Poll::Done(non_empty(r.body))),
        204 => Ok(Poll::Done(None)),
        other => Err(op.decode(format!("unexpected status {other} while polling"))),
    }
}

fn failed(operation: &'static str, resource: &str, status: &str, d: ErrorDetail) -> ArmError {
    ArmError::OperationFailed {
        operation,
        resource: resource.to_string(),
        status: status.into(),
        code: d.code,
        message: d.message,
    }
}

fn non_empty(body: Vec<u8>) -> Option<Vec<u8>> {
    (!body.iter().all(u8::is_ascii_whitespace)).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    const ORIGIN: &str = "https://management.azure.com/";
    const OP: &str = "https://management.azure.com/providers/Microsoft.Compute/locations/x/operations/1?api-version=2024-03-02";
    const LOC: &str = "https://management.azure.com/providers/Microsoft.Compute/locations/x/operations/1?monitor=true&api-version=2024-03-02";
    const RES: &str = "https://management.azure.com/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/snapshots/snap?api-version=2024-03-02";

    fn resp(status: u16, body: &str) -> LroResponse {
        LroResponse {
            status,
            body: body.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    struct Script {
        replies: Mutex<VecDeque<(String, LroResponse)>>,
        sleeps: Mutex<Vec<Duration>>,
    }

    impl Script {
        fn new(replies: Vec<(&str, LroResponse)>) -> Self {
            Self {
                replies: Mutex::new(
                    replies
                        .into_iter()
                        .map(|(u, r)| (u.to_string(), r))
                        .collect(),
                ),
                sleeps: Mutex::new(Vec::new()),
            }
        }
    }

    async fn drive(
        script: &Script,
        initial: LroResponse,
        final_state: FinalState,
        settings: LroSettings,
    ) -> Result<Option<Vec<u8>>, ArmError> {
        wait(
            "test op",
            "rg/res",
            &Url::parse(ORIGIN).unwrap(),
            initial,
            final_state,
            &settings,
            |url: Url| {
                let (expected, reply) = script
                    .replies
                    .lock()
                    .unwrap()
                    .pop_front()
                    .expect("no more replies");
                assert_eq!(url.as_str(), expected);
                async move { Ok(reply) }
            },
            |d| {
                script.sleeps.lock().unwrap().push(d);
                async {}
            },
        )
        .await
    }

    fn accepted_with_both() -> LroResponse {
        LroResponse {
            status: 202,
            async_operation: Some(OP.into()),
            location: Some(LOC.into()),
            retry_after: Some(Duration::from_secs(3)),
            body: vec![],
        }
    }

    #[tokio::test]
    async fn async_operation_then_location_result() {
        let mut running = resp(200, r#"{"status":"InProgress"}"#);
        running.retry_after = Some(Duration::from_secs(1));
        let script = Script::new(vec![
            (OP, running),
            (OP, resp(200, r#"{"status":"Succeeded"}"#)),
            (LOC, resp(200, r#"{"accessSAS":"https://x/y?sig=abc"}"#)),
        ]);
        let out = drive(
            &script,
            accepted_with_both(),
            FinalState::Location,
            LroSettings::default(),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(String::from_utf8(out).unwrap().contains("accessSAS"));
        // Retry-After from the initial response, then from the running poll; none before
        // the final Location read.
        assert_eq!(
            *script.sleeps.lock().unwrap(),
            vec![Duration::from_secs(3), Duration::from_secs(1)]
        );
    }

    #[tokio::test]
    async fn location_only_polls_until_200() {
        let initial = LroResponse {
            status: 202,
            location: Some(LOC.into()),
            ..Default::default()
        };
        let script = Script::new(vec![
            (LOC, resp(202, "")),
            (LOC, resp(202, "")),
            (LOC, resp(200, r#"{"ok":1}"#)),
        ]);
        let settings = LroSettings {
            default_interval: Duration::from_millis(5),
            ..Default::default()
        };
        let out = drive(&script, initial, FinalState::Location, settings)
            .await
            .unwrap();
        assert_eq!(out.unwrap(), br#"{"ok":1}"#);
        assert_eq!(script.sleeps.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn put_reads_the_resource_when_done() {
        let initial = LroResponse {
            status: 201,
            async_operation: Some(OP.into()),
            body: br#"{"properties":{"provisioningState":"Creating"}}"#.to_vec(),
            ..Default::default()
        };
        let script = Script::new(vec![
            (OP, resp(200, r#"{"status":"Succeeded"}"#)),
            (RES, resp(200, r#"{"name":"snap"}"#)),
        ]);
        let out = drive(
            &script,
            initial,
            FinalState::OriginalUri(Url::parse(RES).unwrap()),
            LroSettings::default(),
        )
        .await
        .unwrap();
        assert_eq!(out.unwrap(), br#"{"name":"snap"}"#);
    }

    #[tokio::test]
    async fn delete_finishes_with_204() {
        let initial = LroResponse {
            status: 202,
            location: Some(LOC.into()),
            ..Default::default()
        };
        let script = Script::new(vec![(LOC, resp(204, ""))]);
        assert!(
            drive(&script, initial, FinalState::None, LroSettings::default())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn failed_reports_arm_error() {
        let script = Script::new(vec![(
            OP,
            resp(
                200,
                r#"{"status":"Failed","error":{"code":"OperationNotAllowed","message":"disk is attached"}}"#,
            ),
        )]);
        let err = drive(
            &script,
            accepted_with_both(),
            FinalState::Location,
            LroSettings::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "test op rg/res: operation Failed: OperationNotAllowed: disk is attached"
        );
    }

    #[tokio::test]
    async fn canceled_is_reported_as_canceled() {
        let script = Script::new(vec![(OP, resp(200, r#"{"status":"Canceled"}"#))]);
        let err = drive(
            &script,
            accepted_with_both(),
            FinalState::None,
            LroSettings::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, ArmError::OperationFailed { status, .. } if status == "Canceled"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn overall_timeout() {
        let script = Script::new(vec![
            (OP, resp(200, r#"{"status":"InProgress"}"#)),
            (OP, resp(200, r#"{"status":"InProgress"}"#)),
        ]);
        let settings = LroSettings {
            default_interval: Duration::from_secs(10),
            max_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(25),
        };
        let mut initial = accepted_with_both();
        initial.retry_after = None;
        let err = drive(&script, initial, FinalState::None, settings)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ArmError::OperationTimeout {
                    waited_secs: 20,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn retry_after_is_capped() {
        let mut initial = accepted_with_both();
        initial.retry_after = Some(Duration::from_secs(3600));
        let script = Script::new(vec![(OP, resp(200, r#"{"status":"Succeeded"}"#))]);
        drive(&script, initial, FinalState::None, LroSettings::default())
            .await
            .unwrap();
        assert_eq!(
            *script.sleeps.lock().unwrap(),
            vec![Duration::from_secs(60)]
        );
    }

    #[tokio::test]
    async fn accepted_without_headers_is_an_error() {
        let script = Script::new(vec![]);
        let err = drive(
            &script,
            resp(202, ""),
            FinalState::None,
            LroSettings::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ArmError::Decode { .. }), "{err}");
    }

    #[tokio::test]
    async fn synchronous_completion_returns_the_body() {
        let script = Script::new(vec![]);
        let out = drive(
            &script,
            resp(200, r#"{"x":1}"#),
            FinalState::None,
            LroSettings::default(),
        )
        .await
        .unwrap();
        assert_eq!(out.unwrap(), br#"{"x":1}"#);
    }

    #[tokio::test]
    async fn polling_url_on_another_host_is_refused() {
        let mut initial = accepted_with_both();
        initial.async_operation = Some("https://elsewhere.example/op".into());
        let script = Script::new(vec![]);
        assert!(matches!(
            drive(&script, initial, FinalState::None, LroSettings::default()).await,
            Err(ArmError::BadNextLink { .. })
        ));
    }

    #[test]
    fn async_status_values() {
        assert_eq!(
            async_status(br#"{"status":"Accepted"}"#).unwrap(),
            AsyncStatus::Running
        );
        assert_eq!(
            async_status(br#"{"status":"succeeded"}"#).unwrap(),
            AsyncStatus::Succeeded
        );
        assert!(async_status(b"{}").is_err());
        assert!(async_status(b"not json").is_err());
    }
}
