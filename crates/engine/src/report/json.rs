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

/// One line of a step's output, as `orch ci --json` has always written it.
#[derive(Serialize)]
struct LogLine<'a> {
    t: f64,
    event: &'static str,
    step: &'a str,
    stream: crate::exec::Stream,
    line: &'a str,
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
        if let RunEvent::StepOutput { step, stream, text } = ev {
            // The documented schema: a `step_log` object per line.
            for line in crate::sched::logs::lines_of(text) {
                let l = LogLine { t, event: "step_log", step, stream: *stream, line };
                if serde_json::to_writer(&mut self.out, &l).is_ok() {
                    let _ = self.out.write_all(b"\n");
                }
            }
        } else if serde_json::to_writer(&mut self.out, &Line { t, event: ev }).is_ok() {
            let _ = self.out.write_all(b"\n");
        }
        // One write per event (a batch of output lines is one event), so a tool reading the
        // stream sees output, starts and ends when they happen.
        let _ = self.out.flush();
    }
}

impl<W: Write> Drop for JsonReporter<W> {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}
