//! `websocket.snapshot` with a channel per user: the cache of last records stays at
//! `websocket.snapshotMaxChannels`, the least recently used channel leaves first, and the
//! evictions are counted in `eventstream_ws_snapshot_evictions_total`.

mod relay_support;

use eventstream_testkit::{MockKafka, produce};
use relay_support::*;
use serde_json::{Value, json};

/// Subscribes to `channel` and returns the frames before `subscribed` (the snapshot, if any).
async fn snapshot_of(bridge: &Bridge, channel: &str) -> Vec<Value> {
    let mut ws = connect(&bridge.url("/ws"), None).await;
    send(&mut ws, json!({"type": "subscribe", "channel": channel})).await;
    let mut before = Vec::new();
    loop {
        let frame = next_json(&mut ws).await;
        if frame["type"] == "subscribed" {
            return before;
        }
        before.push(frame);
    }
}

#[test]
fn the_snapshot_cache_keeps_the_most_recently_used_channels_up_to_its_limit() {
    on_multi_thread_runtime("snapshot_cache_is_bounded", async {
        let kafka = MockKafka::new(1).expect("mock cluster");
        kafka.create_topic("t", 2, 1).expect("topic");
        let bootstrap = kafka.bootstrap();
        let bridge = Bridge::start(config(
            &bootstrap,
            "t",
            "snapshot: true, snapshotMaxChannels: 3",
        ))
        .await;
        // One record per user, users 0..10, keyed by user (the channel is the key).
        let records: Vec<(Option<String>, String)> = (0..10)
            .map(|u| (Some(format!("user-{u}")), json!({"u": u}).to_string()))
            .collect();
        produce(&bootstrap, "t", &records).await.expect("produced");
        eventually("every record reached the cache", || {
            bridge.metric("eventstream_ws_snapshot_evictions_total") >= 7.0
        })
        .await;
        assert_eq!(bridge.metric("eventstream_ws_snapshot_channels"), 3.0);
        assert_eq!(
            bridge.metric("eventstream_ws_snapshot_evictions_total"),
            7.0
        );

        // Which three remain depends on the order the two partitions were consumed in; the
        // cache holds exactly three of them, each with its own last record.
        let mut kept = Vec::new();
        for u in 0..10 {
            let before = snapshot_of(&bridge, &format!("user-{u}")).await;
            if let [snapshot] = before.as_slice() {
                assert_eq!(snapshot["data"]["u"], u, "{snapshot}");
                kept.push(u);
            } else {
                assert!(before.is_empty(), "{before:?}");
            }
        }
        assert_eq!(kept.len(), 3, "kept {kept:?}");

        // A subscribe is a use: the oldest kept channel survives two new ones, the other two
        // kept ones leave.
        let (oldest, others) = (kept[0], &kept[1..]);
        assert_eq!(
            snapshot_of(&bridge, &format!("user-{oldest}")).await.len(),
            1
        );
        let more: Vec<(Option<String>, String)> = (10..12)
            .map(|u| (Some(format!("user-{u}")), json!({"u": u}).to_string()))
            .collect();
        produce(&bootstrap, "t", &more).await.expect("produced");
        eventually("the new users reached the cache", || {
            bridge.metric("eventstream_ws_snapshot_evictions_total") >= 9.0
        })
        .await;
        assert_eq!(
            snapshot_of(&bridge, &format!("user-{oldest}")).await.len(),
            1
        );
        for u in others {
            assert!(snapshot_of(&bridge, &format!("user-{u}")).await.is_empty());
        }
        assert_eq!(bridge.metric("eventstream_ws_snapshot_channels"), 3.0);
        assert_eq!(
            bridge.metric("eventstream_ws_snapshot_evictions_total"),
            9.0
        );
        bridge.stop().await;
    });
}
