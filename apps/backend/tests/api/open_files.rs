//! The open-file limit: an instance whose limit cannot hold `MAX_STREAMS` says so and
//! holds fewer streams (refusing the rest as "full"), or refuses to start when asked to
//! be strict.

use std::time::Duration;

use crate::helpers::{Api, BackendProcess, eventually, metric_value, readiness_becomes};

#[tokio::test]
async fn an_instance_short_of_files_holds_fewer_streams_and_says_so() {
    // 600 files, of which 512 are kept for everything but streams: 88 streams.
    let env = [("MAX_STREAMS", "10000"), ("MAX_STREAMS_PER_USER", "1000")];
    let process = BackendProcess::spawn(None, &env, Some(600));
    assert!(readiness_becomes(&process.address, 200).await);
    let api = Api::new(process.address.clone());
    assert_eq!(
        metric_value(&process.address, "sse_streams_max").await,
        Some(88.0)
    );
    let token = api.token("alice").await;
    let mut streams = Vec::new();
    for _ in 0..88 {
        streams.push(api.stream_request(&token, "", None).await);
    }
    assert!(streams.iter().all(|s| s.status() == 200));
    let refused = api.stream_request(&token, "", None).await;
    assert_eq!(refused.status(), 503, "full: the 89th would have no file");
    assert!(
        readiness_becomes(&process.address, 503).await,
        "and not ready"
    );
}

#[tokio::test]
async fn a_strict_instance_short_of_files_refuses_to_start() {
    let mut process = BackendProcess::spawn(
        None,
        &[("MAX_STREAMS", "10000"), ("FILE_LIMIT_STRICT", "true")],
        Some(600),
    );
    let status = eventually("the backend exits", Duration::from_secs(10), || {
        let exited = process.exited();
        async move { exited }
    })
    .await;
    assert!(!status.success(), "{status:?}");
}
