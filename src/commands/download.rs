//! `download URL OUTPUT`: glue between the command line, the transfer job and the
//! progress display. Creates the tokio runtime; everything else lives in `transfer`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::azure::sas::SasUrl;
use crate::azure::session::AzureSession;
use crate::cli::{DownloadArgs, GlobalArgs};
use crate::error::{Error, ErrorKind};
use crate::image::sink::ImageFormat;
use crate::image::staging::Overwrite;
use crate::interrupt::Interrupt;
use crate::output::progress::Progress;
use crate::output::units::human_bytes;
use crate::transfer::engine::{EngineConfig, ProgressEvent, ProgressFn};
use crate::transfer::job::{DownloadReport, DownloadRequest, download};

pub fn run(args: &DownloadArgs, global: &GlobalArgs, interrupt: &Interrupt) -> Result<(), Error> {
    let format = super::output_format(&args.image, &args.output)?;
    // The parse error never quotes the URL's query: safe to show.
    let url = SasUrl::parse(&args.url).map_err(|e| Error::usage(format!("download URL: {e}")))?;
    // One session for the transport (--ca-bundle roots, cloud) and, for a URL without a
    // SAS, the credential chain: storage-account blobs (unmanaged disks) are read with an
    // Entra ID token for https://storage.azure.com.
    let session = super::azure_session(&args.azure)?;
    let needs_token = !url.has_sas();
    if needs_token && url.expose().scheme() != "https" {
        return Err(Error::usage(format!(
            "download URL {url} has no SAS: signing in with Entra ID needs an https URL"
        )));
    }
    let req = request(args, &session, url, format, needs_token);
    let runtime = super::async_runtime("azure2kvm-io")?;
    if needs_token {
        // One clear usage error listing every credential source tried, before any work.
        runtime
            .block_on(interrupt.unless_cancelled(session.check_storage_credential()))
            .ok_or_else(|| Error::new(ErrorKind::Interrupted, "interrupted"))??;
    }
    let label = format!("downloading {}", args.output.display());
    let report = with_progress(label, global.progress_enabled(), |on_event| {
        runtime.block_on(download(req, on_event, interrupt.clone()))
    })?;
    log_report(&report);
    Ok(())
}

/// The flags as the transfer job's typed request.
fn request(
    args: &DownloadArgs,
    session: &AzureSession,
    url: SasUrl,
    format: ImageFormat,
    needs_token: bool,
) -> DownloadRequest {
    let mut req = DownloadRequest::new(url, args.output.clone(), format);
    req.read.client_options = Some(session.client_options());
    req.read.md_service_version = args.azure.md_service_version;
    if needs_token {
        tracing::info!(
            "the URL has no SAS: reading the blob with an Entra ID token ({:?} sign-in)",
            args.azure.auth
        );
        req.read.credential = Some(session.credential.clone());
    }
    req.overwrite = if args.image.force {
        Overwrite::Allow
    } else {
        Overwrite::Refuse
    };
    req.read.chunk_size = args.chunk_size;
    req.read.verify = args.verify;
    req.read.engine = EngineConfig {
        concurrency: args.concurrency,
        ..EngineConfig::default()
    };
    req.read.io_timeout = Duration::from_secs(args.io_timeout);
    req
}

/// Runs `work` with a progress bar fed by its events, made at the first event (when the
/// total is known) and finished whatever `work` returns.
fn with_progress<T>(label: String, show: bool, work: impl FnOnce(ProgressFn) -> T) -> T {
    let progress: Arc<Mutex<Option<Progress>>> = Arc::new(Mutex::new(None));
    let sink_progress = Arc::clone(&progress);
    let on_event = Arc::new(move |event: ProgressEvent| match event {
        ProgressEvent::Advanced { done, total } => {
            let mut p = sink_progress.lock().unwrap_or_else(|e| e.into_inner());
            p.get_or_insert_with(|| Progress::new(label.clone(), total, show))
                .set(done);
        }
    });
    let result = work(on_event);
    if let Some(p) = progress.lock().unwrap_or_else(|e| e.into_inner()).take() {
        p.finish();
    }
    result
}

/// What was written, for people, then one machine-readable line for scripts, benchmarks
/// and tests.
fn log_report(report: &DownloadReport) {
    let s = &report.stats;
    tracing::info!(
        "wrote {} ({:?}, virtual size {}, {} of written data; fetched {} in {:.1} s{})",
        report.output.display(),
        report.format,
        human_bytes(report.virtual_size),
        human_bytes(report.data_bytes),
        human_bytes(s.bytes_fetched),
        report.elapsed_secs,
        if report.resumed_chunks > 0 {
            format!(
                ", {} chunks resumed from an earlier run",
                report.resumed_chunks
            )
        } else {
            String::new()
        }
    );
    tracing::info!(
        "stats: bytes_fetched={} data_bytes={} planned_bytes={} chunks={} resumed_chunks={} zero_chunks={} requests={} retries={} checkpoints={} bytes_written={} elapsed_secs={:.3}",
        s.bytes_fetched,
        report.data_bytes,
        report.planned_bytes,
        report.chunks,
        report.resumed_chunks,
        s.zero_chunks,
        s.requests,
        s.retries,
        s.checkpoints,
        s.sink.bytes_written,
        report.elapsed_secs
    );
}
