//! Event expiry: like Kubernetes' `--event-ttl` (one hour), events go an hour after their last
//! change, so a long-running node's store does not fill with them. The storage writer runs
//! the sweep as a chore.

use std::time::Duration;

use serde_json::{Value, json};
use skiff_api::ApiError;

use super::core;
use crate::storage::{Chore, Key, Outcome, Tx};

pub const EVENT_TTL: Duration = Duration::from_secs(3600);
const SWEEP_EVERY: Duration = Duration::from_secs(300);

pub fn expiry_chore() -> Chore {
    Chore { every: SWEEP_EVERY, op: Box::new(|| Box::new(|tx| expire(tx, jiff::Timestamp::now(), EVENT_TTL))) }
}

/// When the event last changed: the latest of its timestamps.
fn last_seen(event: &Value) -> Option<jiff::Timestamp> {
    ["/lastTimestamp", "/eventTime", "/series/lastObservedTime", "/metadata/creationTimestamp"]
        .iter()
        .filter_map(|p| event.pointer(p)?.as_str()?.parse::<jiff::Timestamp>().ok())
        .max()
}

/// Deletes the events last changed more than `ttl` before `now`.
pub fn expire(tx: &mut Tx<'_>, now: jiff::Timestamp, ttl: Duration) -> Result<Outcome, ApiError> {
    let events = core("events");
    let cutoff = now - jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::ZERO);
    let mut expired = 0;
    for event in tx.list(events, None)? {
        if last_seen(&event).is_none_or(|t| t >= cutoff) {
            continue;
        }
        let key = Key::new(
            events,
            event["metadata"]["namespace"].as_str(),
            event["metadata"]["name"].as_str().unwrap_or_default(),
        );
        tx.delete(&key, event)?;
        expired += 1;
    }
    Ok(Outcome::of(json!({"expired": expired})))
}
