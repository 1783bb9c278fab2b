//! Coalescing bursts of events into one rebuild: both sources reconcile by level, so only the
//! fact that something changed (and when it first did) matters, not each event.

use std::time::Duration;

use tokio::{sync::mpsc, time::Instant};

/// How long to wait for a burst to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Debounce {
    /// A burst ends after this long without a new event.
    pub quiet: Duration,
    /// ...or this long after its first event, so a steady trickle still gets applied.
    pub max_delay: Duration,
}

/// Collects `first` and every event that follows it within the debounce windows.
///
/// Returns the events in arrival order; fewer than all pending ones only when `max_delay`
/// cut the burst short (the rest start the next burst). An empty tail means the sender is gone.
pub async fn gather<T>(
    receiver: &mut mpsc::UnboundedReceiver<T>,
    first: T,
    debounce: Debounce,
) -> Vec<T> {
    let deadline = Instant::now() + debounce.max_delay;
    let mut burst = vec![first];
    loop {
        let quiet_end = (Instant::now() + debounce.quiet).min(deadline);
        match tokio::time::timeout_at(quiet_end, receiver.recv()).await {
            Ok(Some(event)) => burst.push(event),
            // Timed out (quiet, or the burst is old enough) or the sender is gone.
            Ok(None) | Err(_) => return burst,
        }
        if Instant::now() >= deadline {
            return burst;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBOUNCE: Debounce = Debounce {
        quiet: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
    };

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_gathered_until_quiet() {
        let (sender, mut receiver) = mpsc::unbounded_channel();
        for event in 1..=5 {
            sender.send(event).unwrap();
        }
        let burst = gather(&mut receiver, 0, DEBOUNCE).await;
        assert_eq!(
            burst,
            vec![0, 1, 2, 3, 4, 5],
            "all queued events belong to one burst"
        );

        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            sender.send(7).unwrap();
        });
        let burst = gather(&mut receiver, 6, DEBOUNCE).await;
        assert_eq!(
            burst,
            vec![6],
            "an event after the quiet window starts a new burst"
        );
        late.await.unwrap();
        assert_eq!(receiver.recv().await, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_trickle_is_cut_at_max_delay() {
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let trickle = tokio::spawn(async move {
            for event in 1..=100 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if sender.send(event).is_err() {
                    return;
                }
            }
        });
        let burst = gather(&mut receiver, 0, DEBOUNCE).await;
        assert!(
            burst.len() < 101,
            "events every 10 ms never go quiet for 20 ms; max_delay must end the burst, got {}",
            burst.len()
        );
        drop(receiver);
        trickle.await.unwrap();
    }
}
