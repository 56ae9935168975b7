//! Progress rendering: a bar on a terminal, periodic log lines otherwise (schedulers and CI
//! keep stderr as a log), nothing with --no-progress. Callers only report counts.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::units::human_bytes;

/// How often a non-terminal run logs a progress line.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum Render {
    Bar(ProgressBar),
    Log { last: Instant },
    Off,
}

/// Progress of one byte-counted job.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: u64,
    started: Instant,
    render: Render,
}

impl Progress {
    /// `enabled` false (--no-progress, -q, or a job too small to matter) shows nothing.
    pub fn new(label: impl Into<String>, total: u64, enabled: bool) -> Self {
        let label = label.into();
        let render = if !enabled {
            Render::Off
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar.set_message(label.clone());
            Render::Bar(bar)
        } else {
            Render::Log {
                last: Instant::now(),
            }
        };
        Self {
            label,
            total,
            started: Instant::now(),
            render,
        }
    }

    /// Reports that `done` of `total` bytes are complete.
    pub fn set(&mut self, done: u64) {
        match &mut self.render {
            Render::Bar(bar) => bar.set_position(done),
            Render::Log { last } if last.elapsed() >= LOG_EVERY => {
                *last = Instant::now();
                let secs = self.started.elapsed().as_secs_f64().max(0.001);
                let rate = done as f64 / secs;
                let eta = if rate > 0.0 {
                    (self.total.saturating_sub(done)) as f64 / rate
                } else {
                    0.0
                };
                tracing::info!(
                    "{}: {} of {} ({:.0}%), {}/s, ETA {:.0} s",
                    self.label,
                    human_bytes(done),
                    human_bytes(self.total),
                    done as f64 * 100.0 / self.total.max(1) as f64,
                    human_bytes(rate as u64),
                    eta
                );
            }
            _ => {}
        }
    }

    /// Changes the total and the label (a job whose parts become known as it runs, like
    /// an export, says so in its label).
    pub fn set_total(&mut self, total: u64, label: &str) {
        self.total = total;
        if self.label != label {
            self.label = label.to_string();
            if let Render::Bar(bar) = &self.render {
                bar.set_message(self.label.clone());
            }
        }
        if let Render::Bar(bar) = &self.render {
            bar.set_length(total);
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn finish(self) {
        if let Render::Bar(bar) = self.render {
            bar.finish_and_clear();
        }
    }
}
