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

/// One display for a job of several parts whose sizes become known as each starts (an
/// export's disks): the bytes of every started part, summed. Until every part has
/// reported, the label says how many of them the total covers.
#[derive(Debug)]
pub struct PartsProgress<K> {
    enabled: bool,
    parts: std::sync::atomic::AtomicUsize,
    state: std::sync::Mutex<PartsState<K>>,
}

#[derive(Debug)]
struct PartsState<K> {
    /// (done, total) per part.
    parts: std::collections::HashMap<K, (u64, u64)>,
    /// The display, once there is something to show.
    bar: Option<Progress>,
}

impl<K: std::hash::Hash + Eq> PartsProgress<K> {
    /// `parts`: how many parts (disks) the job has.
    pub fn new(enabled: bool, parts: usize) -> Self {
        Self {
            enabled,
            parts: parts.into(),
            state: std::sync::Mutex::new(PartsState {
                parts: std::collections::HashMap::new(),
                bar: None,
            }),
        }
    }

    /// The number of parts, once known (before the first `advance`).
    pub fn set_parts(&self, parts: usize) {
        self.parts
            .store(parts, std::sync::atomic::Ordering::Relaxed);
    }

    fn label(&self, sized: usize) -> String {
        let parts = self.parts.load(std::sync::atomic::Ordering::Relaxed);
        if sized < parts {
            format!("exporting ({sized} of {parts} disks sized so far)")
        } else {
            format!("exporting {parts} disks")
        }
    }

    /// Part `part` has `done` of its `total` bytes.
    pub fn advance(&self, part: K, done: u64, total: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.parts.insert(part, (done, total));
        let (d, t) = st
            .parts
            .values()
            .fold((0, 0), |(d, t), (a, b)| (d + a, t + b));
        let label = self.label(st.parts.len());
        let bar = st
            .bar
            .get_or_insert_with(|| Progress::new(&label, t, self.enabled));
        bar.set_total(t, &label);
        bar.set(d);
    }

    pub fn finish(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = st.bar.take() {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_says_when_the_total_is_partial() {
        let p = PartsProgress::new(false, 0);
        p.set_parts(3);
        assert_eq!(p.label(1), "exporting (1 of 3 disks sized so far)");
        assert_eq!(p.label(3), "exporting 3 disks");
        p.advance("a", 5, 10);
        p.advance("b", 1, 20);
        p.advance("a", 6, 10);
        let st = p.state.lock().unwrap();
        let bar = st.bar.as_ref().expect("a display once a disk reported");
        assert_eq!(bar.label(), "exporting (2 of 3 disks sized so far)");
        assert_eq!(bar.total(), 30);
    }
}
