//! batch: gather items into batches by row count or by age, whichever comes first.

use crate::model::{Batch, Item};
use std::time::Duration;
use tokio::time::Instant;

/// Batching limits.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Emit when bodies + sightings reach this many rows.
    pub max_rows: usize,
    /// Emit when the oldest item in the batch is this old.
    pub max_age: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: 20_000,
            max_age: Duration::from_millis(500),
        }
    }
}

/// Adds one item to a batch.
pub fn push(batch: &mut Batch, item: Item) {
    match item {
        Item::Body(ev, s) => {
            batch.events.push(ev);
            batch.sightings.push(s);
        }
        Item::Sighting(s) => batch.sightings.push(s),
    }
}

/// Runs until the input closes (flushing what it holds) or the output is dropped.
pub async fn run(
    cfg: BatchConfig,
    input: flume::Receiver<Vec<Item>>,
    output: flume::Sender<Batch>,
) {
    let mut batch = Batch::default();
    let mut deadline: Option<Instant> = None;
    loop {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, input.recv_async()).await {
                Ok(r) => r.ok(),
                Err(_) => {
                    // Age limit reached.
                    let full = std::mem::take(&mut batch);
                    deadline = None;
                    if output.send_async(full).await.is_err() {
                        return;
                    }
                    continue;
                }
            },
            None => input.recv_async().await.ok(),
        };
        let Some(items) = next else { break };
        if batch.sightings.is_empty() {
            deadline = Some(Instant::now() + cfg.max_age);
        }
        for item in items {
            push(&mut batch, item);
        }
        if batch.rows() >= cfg.max_rows {
            let full = std::mem::take(&mut batch);
            deadline = None;
            if output.send_async(full).await.is_err() {
                return;
            }
        }
    }
    if !batch.sightings.is_empty() {
        let _ = output.send_async(batch).await;
    }
}
