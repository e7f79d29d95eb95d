//! Micro-benchmarks of the hot pure code: signing (both vendors), verdict parsing, batching and
//! chunking, outcome classification. `cargo bench` runs them.

use std::hint::black_box;
use std::time::Duration;

use bouncer::batch::{Claim, RoomBatches};
use bouncer::vendor_api::{trtc, zego};
use bouncer::verdict::{RoomId, Verdict};
use criterion::{Criterion, criterion_group, criterion_main};

fn signing(c: &mut Criterion) {
    c.bench_function("zego signature (md5)", |b| {
        b.iter(|| {
            zego::signature(
                black_box(1234567890),
                black_box("0123456789abcdef"),
                black_box("abcdefghijklmnopqrstuvwxyz012345"),
                black_box(1700000000),
            )
        })
    });
    let users: Vec<String> = (0..10).map(|i| format!("user-{i}")).collect();
    c.bench_function("trtc body + TC3 authorization", |b| {
        b.iter(|| {
            let body = trtc::body(1400000001, &RoomId::Numeric(1234), black_box(&users));
            let headers = [("content-type", trtc::CONTENT_TYPE), ("host", "trtc.tencentcloudapi.com")];
            trtc::authorization(
                "AKIDz8krbsJ5yKBZQpn74WFkmLPx3*******",
                "Gu5t9xGARNpq86cd98joQYCN3*******",
                &trtc::SignInput {
                    method: "POST",
                    query: "",
                    headers: &headers,
                    body: &body,
                    service: trtc::SERVICE,
                    timestamp: 1551113065,
                },
            )
        })
    });
    let common = zego::Common {
        app_id: 1234567890,
        nonce: "0123456789abcdef",
        timestamp: 1700000000,
        signature: "33c723c09b2efad9b5d4042afd31f118",
        is_test: None,
    };
    let five: Vec<String> = users[..5].to_vec();
    c.bench_function("zego query string (5 users, reason)", |b| {
        b.iter(|| zego::query_string(&common, black_box("room-1"), black_box(&five), Some("违规内容 spam")))
    });
}

fn parsing(c: &mut Criterion) {
    let typical = br#"{"verdict_id":"asr-2026-11-22-000123","vendor":"trtc","app_id":1400000001,"room_id":1234,"user_ids":["u-77","u-91","u-12"],"reason":"hate speech","source":"asr-v3","detected_at":"2026-11-22T03:00:00Z","evidence":{"score":0.97}}"#;
    c.bench_function("parse a typical verdict", |b| b.iter(|| Verdict::parse(black_box(typical))));
    let users: Vec<String> = (0..100).map(|i| format!("user-{i:04}")).collect();
    let big = serde_json::json!({"verdict_id": "v", "vendor": "zego", "app_id": 1, "room_id": "r", "user_ids": users})
        .to_string();
    c.bench_function("parse a 100-user verdict", |b| b.iter(|| Verdict::parse(black_box(big.as_bytes()))));
    c.bench_function("reject a malformed body", |b| b.iter(|| Verdict::parse(black_box(b"{\"verdict_id\": 12}"))));
}

fn batching(c: &mut Criterion) {
    let verdicts: Vec<Claim> = (0..1000).map(|i| Claim::new(&format!("v{i}"))).collect();
    let rooms: Vec<RoomId> = (0..50).map(|i| RoomId::Text(format!("room-{i}"))).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    c.bench_function("batch 5000 users into 50 rooms and cut every chunk", |b| {
        b.iter(|| {
            let _guard = rt.enter();
            let mut batches = RoomBatches::new(5, Duration::from_millis(25));
            let now = tokio::time::Instant::now();
            for i in 0..5000 {
                batches.add(
                    &rooms[i % 50],
                    &format!("u{i}"),
                    verdicts[i % 1000].clone(),
                    None,
                    chrono::Utc::now(),
                    now,
                );
            }
            let later = now + Duration::from_millis(30);
            let mut chunks = 0;
            while let Some(room) = batches.ready(later) {
                chunks += usize::from(!batches.take(&room).is_empty());
            }
            chunks
        })
    });
}

fn classification(c: &mut Criterion) {
    let zego_codes = [0, 1, 206, 104, 100000005, 100000011, 50011, 424242];
    c.bench_function("classify ZEGO codes", |b| {
        b.iter(|| zego_codes.iter().map(|c| zego::classify(black_box(*c))).collect::<Vec<_>>())
    });
    let trtc_codes = [
        "RequestLimitExceeded.UinLimitExceeded",
        "InternalError.GetRoomCacheIpError",
        "FailedOperation.RoomNotExist",
        "AuthFailure.SignatureFailure",
        "InvalidParameter.UserIds",
        "Unknown.Code",
    ];
    c.bench_function("classify TRTC codes", |b| {
        b.iter(|| trtc_codes.iter().map(|c| trtc::classify(black_box(c))).collect::<Vec<_>>())
    });
    let reply = br#"{"Response":{"Error":{"Code":"RequestLimitExceeded","Message":"slow down"},"RequestId":"eac6b301-a322-493a-8e36-83b295459397"}}"#;
    c.bench_function("read a TRTC error reply", |b| {
        b.iter(|| trtc::interpret(trtc::ACTION_NUMERIC, black_box(reply), Duration::ZERO))
    });
}

criterion_group!(benches, signing, parsing, batching, classification);
criterion_main!(benches);
