//! `orch ci --json`: every event as one JSON object per line, with `t`, the seconds since
//! the reporter started. The event fields are those of `RunEvent` (see docs/cli.md).

use std::io::Write;
use std::time::Instant;

use serde::Serialize;

use crate::sched::RunEvent;

#[derive(Serialize)]
struct Line<'a> {
    t: f64,
    #[serde(flatten)]
    event: &'a RunEvent,
}

pub struct JsonReporter<W: Write> {
    out: std::io::BufWriter<W>,
    start: Instant,
}

impl<W: Write> JsonReporter<W> {
    pub fn new(out: W) -> Self {
        JsonReporter { out: std::io::BufWriter::new(out), start: Instant::now() }
    }

    pub fn event(&mut self, ev: &RunEvent) {
        let t = (self.start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        if serde_json::to_writer(&mut self.out, &Line { t, event: ev }).is_ok() {
            let _ = self.out.write_all(b"\n");
        }
        // Lines are buffered during a step's output; everything else is flushed at once so
        // a tool reading the stream sees steps start and end when they do.
        if !matches!(ev, RunEvent::StepLog { .. }) {
            let _ = self.out.flush();
        }
    }
}

impl<W: Write> Drop for JsonReporter<W> {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}
