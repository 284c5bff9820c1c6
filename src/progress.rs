//! Progress display for long steps: an `indicatif` bar on a terminal, and a plain line every
//! few seconds when stderr is not one (SLURM logs, CI), so logs stay readable and small.
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Seconds between plain progress lines; `STYLEBRIDGE_PROGRESS_SECS` overrides it.
const DEFAULT_PLAIN_INTERVAL: Duration = Duration::from_secs(30);

/// A counter of finished work items out of a known total. Shareable across threads.
pub struct Progress {
    label: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
    display: Display,
}

enum Display {
    Bar(ProgressBar),
    /// Time of the last printed line, and the interval between lines.
    Plain { last: Mutex<Instant>, every: Duration },
    Hidden,
}

impl Progress {
    /// A bar if stderr is a terminal, plain lines otherwise.
    pub fn new(label: &str, total: u64) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} eta {eta} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(label.to_string());
            Self::with_display(label, total, Display::Bar(bar))
        } else {
            Self::plain(label, total, plain_interval())
        }
    }

    /// Plain lines at most every `every` (and a last one from [`Progress::finish`]).
    pub fn plain(label: &str, total: u64, every: Duration) -> Self {
        Self::with_display(label, total, Display::Plain { last: Mutex::new(Instant::now()), every })
    }

    /// Counts without printing anything (tests, benchmarks).
    pub fn hidden(label: &str, total: u64) -> Self {
        Self::with_display(label, total, Display::Hidden)
    }

    fn with_display(label: &str, total: u64, display: Display) -> Self {
        Self { label: label.to_string(), total, done: AtomicU64::new(0), started: Instant::now(), display }
    }

    /// Items finished so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Record `n` more finished items.
    pub fn inc(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        match &self.display {
            Display::Bar(bar) => bar.inc(n),
            Display::Plain { last, every } => {
                let Ok(mut last) = last.lock() else { return };
                if last.elapsed() >= *every {
                    *last = Instant::now();
                    eprintln!("{}", self.line(done));
                }
            }
            Display::Hidden => {}
        }
    }

    /// Close the bar, or print the final plain line.
    pub fn finish(&self) {
        match &self.display {
            Display::Bar(bar) => bar.finish(),
            Display::Plain { .. } => eprintln!("{}", self.line(self.done())),
            Display::Hidden => {}
        }
    }

    /// "label: 12/40 (30.0%), 2.1/s, elapsed 5s, eta 13s"
    fn line(&self, done: u64) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 { done as f64 / elapsed } else { 0.0 };
        let percent = if self.total > 0 { 100.0 * done as f64 / self.total as f64 } else { 100.0 };
        let eta = if rate > 0.0 { format!("{:.0}s", self.total.saturating_sub(done) as f64 / rate) } else { "?".into() };
        format!("{}: {done}/{} ({percent:.1}%), {rate:.2}/s, elapsed {elapsed:.0}s, eta {eta}", self.label, self.total)
    }
}

fn plain_interval() -> Duration {
    std::env::var("STYLEBRIDGE_PROGRESS_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map_or(DEFAULT_PLAIN_INTERVAL, Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_across_threads_and_formats_a_plain_line() {
        let progress = Progress::plain("prepare", 40, Duration::from_secs(3600));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..3).for_each(|_| progress.inc(1)));
            }
        });
        assert_eq!(progress.done(), 12);
        let line = progress.line(12);
        assert!(line.starts_with("prepare: 12/40 (30.0%), "), "{line}");
        assert!(line.contains("eta "), "{line}");
    }
}
