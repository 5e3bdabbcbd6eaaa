//! Live logs: the runs executing in this server broadcast the log lines as they are written,
//! and followers (the API's SSE, so `orch logs --follow` and the dashboard) subscribe.
//! Nothing polls: a line reaches a follower as soon as the step printed it.
//!
//! A follower subscribes first, then reads the file up to the length the writer had
//! flushed when it subscribed, then takes the broadcast lines past that: no line is lost
//! or sent twice. A follower too slow for the broadcast reads the file again from where it
//! was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::status::{RunState, StepState};

/// What a live run sends its followers.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Whole lines of `step`'s log (each ending with `\n`), which end at byte `end` of its
    /// file.
    Lines { step: String, text: Arc<str>, end: u64 },
    /// The step ended with this status.
    StepDone { step: String, status: StepState },
    /// The run ended with this status.
    RunDone { status: RunState },
}

#[derive(Debug, Default, Clone)]
struct StepLog {
    /// Bytes of the log file flushed so far.
    len: u64,
    done: Option<StepState>,
}

/// One running run.
pub struct Feed {
    tx: broadcast::Sender<Item>,
    steps: Mutex<HashMap<String, StepLog>>,
}

/// Batches of lines kept for a follower that fell behind, before it reads the file instead.
const BACKLOG: usize = 4096;

impl Feed {
    fn new() -> Feed {
        Feed { tx: broadcast::channel(BACKLOG).0, steps: Mutex::new(HashMap::new()) }
    }

    /// Sends `items` (lines already flushed to their files, in order).
    pub fn send(&self, items: Vec<Item>) {
        let Ok(mut steps) = self.steps.lock() else { return };
        for item in items {
            match &item {
                Item::Lines { step, end, .. } => steps.entry(step.clone()).or_default().len = *end,
                Item::StepDone { step, status } => steps.entry(step.clone()).or_default().done = Some(*status),
                Item::RunDone { .. } => {}
            }
            // No follower is fine.
            let _ = self.tx.send(item);
        }
    }

    /// A subscription to the feed, with `step`'s state at that moment: the length of its
    /// flushed log and its status if it ended.
    pub fn follow(&self, step: &str) -> (broadcast::Receiver<Item>, u64, Option<StepState>) {
        let steps = self.steps.lock().ok();
        let rx = self.tx.subscribe();
        let state = steps.and_then(|s| s.get(step).cloned()).unwrap_or_default();
        (rx, state.len, state.done)
    }
}

/// The feeds of the runs executing now, by run id.
#[derive(Default)]
pub struct Live {
    runs: Mutex<HashMap<i64, Arc<Feed>>>,
}

impl Live {
    /// The feed of a run starting now.
    pub fn start(&self, run: i64) -> Arc<Feed> {
        let feed = Arc::new(Feed::new());
        if let Ok(mut runs) = self.runs.lock() {
            runs.insert(run, feed.clone());
        }
        feed
    }

    /// The run is over: its followers get `RunDone`, and later ones read files.
    pub fn end(&self, run: i64, status: RunState) {
        let feed = self.runs.lock().ok().and_then(|mut r| r.remove(&run));
        if let Some(feed) = feed {
            feed.send(vec![Item::RunDone { status }]);
        }
    }

    pub fn get(&self, run: i64) -> Option<Arc<Feed>> {
        self.runs.lock().ok()?.get(&run).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_follower_gets_what_comes_after_its_snapshot() {
        let live = Live::default();
        let feed = live.start(1);
        feed.send(vec![Item::Lines { step: "a".into(), text: "one\n".into(), end: 4 }]);
        let (mut rx, len, done) = feed.follow("a");
        assert_eq!((len, done), (4, None));
        feed.send(vec![
            Item::Lines { step: "a".into(), text: "two\n".into(), end: 8 },
            Item::StepDone { step: "a".into(), status: StepState::Passed },
        ]);
        assert_eq!(rx.recv().await.unwrap(), Item::Lines { step: "a".into(), text: "two\n".into(), end: 8 });
        assert!(matches!(rx.recv().await.unwrap(), Item::StepDone { .. }));
        live.end(1, RunState::Success);
        assert_eq!(rx.recv().await.unwrap(), Item::RunDone { status: RunState::Success });
        assert!(live.get(1).is_none());
        let (_, len, done) = feed.follow("a");
        assert_eq!((len, done), (8, Some(StepState::Passed)));
    }
}
