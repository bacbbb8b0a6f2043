//! The `WatchStatus` stream every service offers: a snapshot at once, then one whenever the
//! process reports a change and at least every interval, until the client leaves or the process
//! shuts down (so a watcher never holds a draining server open).

use std::time::Duration;

use paretopo_proto::v1::WatchStatusRequest;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::Process;

/// The interval used when a request asks for 0.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(2000);
/// The allowed range of `interval_ms`.
pub const INTERVAL_RANGE_MS: std::ops::RangeInclusive<u32> = 100..=60_000;

/// The stream type of every `WatchStatus` RPC.
pub type StatusStream<T> = ReceiverStream<Result<T, Status>>;

/// Reads and checks `interval_ms`: `INVALID_ARGUMENT`, naming the field, when out of range.
pub fn interval(request: &WatchStatusRequest) -> Result<Duration, Status> {
    match request.interval_ms {
        0 => Ok(DEFAULT_INTERVAL),
        ms if INTERVAL_RANGE_MS.contains(&ms) => Ok(Duration::from_millis(ms.into())),
        ms => Err(Status::invalid_argument(format!(
            "interval_ms: must be 0 (default) or between {} and {}, got {ms}",
            INTERVAL_RANGE_MS.start(),
            INTERVAL_RANGE_MS.end()
        ))),
    }
}

/// Answers a `WatchStatus` request: checks `interval_ms` (see [`interval`]), then streams
/// `snapshot()` (see [`watch`]). Every service's `WatchStatus` is this call.
pub fn respond<T, F>(
    process: &Process,
    request: &WatchStatusRequest,
    snapshot: F,
) -> Result<tonic::Response<StatusStream<T>>, Status>
where
    T: Send + 'static,
    F: Fn() -> T + Send + 'static,
{
    let every = interval(request)?;
    let Some(place) = process.status_watcher() else {
        return Err(Status::resource_exhausted(format!(
            "{} status streams are open already (`limits.max_status_watchers`)",
            process.limits().max_status_watchers
        )));
    };
    Ok(tonic::Response::new(watch(process, every, snapshot, Some(place))))
}

/// Spawns the producer of a status stream; `snapshot` builds one status message. `place`, if
/// any, is held until the stream ends.
pub fn watch<T, F>(
    process: &Process,
    every: Duration,
    snapshot: F,
    place: Option<crate::process::WatcherGuard>,
) -> StatusStream<T>
where
    T: Send + 'static,
    F: Fn() -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let shutdown = process.shutdown().clone();
    let mut changes = process.status_changes();
    tokio::spawn(async move {
        let _place = place;
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The first tick fires at once: the stream opens with a snapshot.
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                changed = changes.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    ticker.reset();
                }
                _ = ticker.tick() => {}
            }
            if tx.send(Ok(snapshot())).await.is_err() {
                break; // the client went away
            }
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    use tokio_stream::StreamExt;

    use super::*;
    use crate::Role;
    use crate::process::ProcessSetup;

    async fn process() -> Process {
        Process::new(
            ProcessSetup {
                role: Role::Actor,
                run_name: "t".into(),
                service_name: "paretopo.v1.Actor",
                listen_address: SocketAddr::from(([127, 0, 0, 1], 0)),
                metrics_address: None,
                advertised_address: None,
                drain_timeout: Duration::from_secs(1),
                limits: crate::config::LimitsSection {
                    max_status_watchers: 2,
                    ..Default::default()
                },
                security: Default::default(),
            },
            Instant::now(),
        )
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn status_watchers_are_bounded_and_a_closed_stream_frees_its_place() {
        let process = process().await;
        let request = WatchStatusRequest { interval_ms: 0 };
        let first = respond(&process, &request, || 1u8).expect("first place");
        let second = respond(&process, &request, || 2u8).expect("second place");
        let refused = respond(&process, &request, || 3u8).expect_err("no third place");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("limits.max_status_watchers"), "{}", refused.message());
        // The client leaves: the producer notices at its next send and gives the place back.
        drop(first);
        process.notify_status_changed();
        let mut third = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Ok(stream) = respond(&process, &request, || 3u8) {
                third = Some(stream);
                break;
            }
        }
        let mut third = third.expect("a place once the first stream closed").into_inner();
        assert_eq!(third.next().await.expect("first").expect("ok"), 3);
        drop(second);
    }

    #[test]
    fn interval_range_is_enforced_and_names_the_field() {
        let req = |ms| WatchStatusRequest { interval_ms: ms };
        assert_eq!(interval(&req(0)).expect("default"), DEFAULT_INTERVAL);
        assert_eq!(interval(&req(100)).expect("low end"), Duration::from_millis(100));
        assert_eq!(interval(&req(60_000)).expect("high end"), Duration::from_secs(60));
        for bad in [1, 99, 60_001, u32::MAX] {
            let status = interval(&req(bad)).expect_err("out of range");
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().starts_with("interval_ms:"), "{}", status.message());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sends_at_once_on_change_and_on_every_tick() {
        let process = process().await;
        let counter = Arc::new(AtomicU32::new(0));
        let c = counter.clone();
        let mut stream = watch(
            &process,
            Duration::from_secs(10),
            move || c.fetch_add(1, Ordering::SeqCst),
            None,
        );
        assert_eq!(stream.next().await.expect("first").expect("ok"), 0);

        // A change is sent without waiting for the tick.
        let before = tokio::time::Instant::now();
        process.notify_status_changed();
        assert_eq!(stream.next().await.expect("change").expect("ok"), 1);
        assert!(before.elapsed() < Duration::from_secs(1));

        // With no change, the next one comes after the interval.
        let before = tokio::time::Instant::now();
        assert_eq!(stream.next().await.expect("tick").expect("ok"), 2);
        assert!(before.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn ends_on_shutdown() {
        let process = process().await;
        let mut stream = watch(&process, Duration::from_secs(10), || 7u8, None);
        assert_eq!(stream.next().await.expect("first").expect("ok"), 7);
        process.shutdown().cancel();
        assert!(stream.next().await.is_none(), "stream must end after shutdown");
    }
}
