//! The durable queue alone: commit 500 events of ~500 bytes with a checkpoint
//! (fdatasync + sled transaction + fsync), and read + acknowledge 500.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use thoth_ingest::event::{EnforcementMode, EventType, Timestamp};
use thoth_ingest::parse::{EventBuf, EventContext, Record};
use thoth_ingest::queue::Queue;

const EVENTS: usize = 500;

fn events() -> EventBuf {
    let ctx = EventContext {
        tenant_id: "bench-tenant".into(),
        user_id: "alice@example.com".into(),
        agent_id: Some("bench-agent".into()),
        session_id: "5d0c1f5e-7c2a-4a51-a0a4-54d8b8a3f0d1".into(),
        enforcement_mode: EnforcementMode::Observe,
        ttl_secs: 90 * 86400,
        content_max_bytes: 4096,
    };
    let mut buf = EventBuf::default();
    let content = "x".repeat(40);
    for i in 0..EVENTS {
        let rec = Record {
            stream: "bench/0123456789abcdef",
            position: i as u64 * 350,
            line: b"",
            read_at: Timestamp::from_unix_micros(1_780_000_000_000_000),
        };
        let mut e = ctx.base_event(&rec, 0, EventType::ToolCallPre, rec.read_at);
        e.tool_name = "bash".into();
        e.content = content.as_str().into();
        buf.push(&e);
    }
    buf
}

fn bench_queue(c: &mut Criterion) {
    let batch = events();
    let avg = batch.bytes.len() / EVENTS;
    let mut group = c.benchmark_group(format!("queue ({EVENTS} events of {avg} bytes)"));
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(30);

    let dir = tempfile::tempdir().expect("temp dir");
    let queue = Queue::open(dir.path(), 64 << 20).expect("open queue");
    let mut offset = 0u64;
    group.bench_function("commit with checkpoint", |b| {
        b.iter(|| {
            offset += 1;
            queue
                .commit(
                    &batch,
                    b"file/bench/0123456789abcdef",
                    &offset.to_le_bytes(),
                )
                .expect("commit");
        })
    });

    group.bench_function("peek + take + ack", |b| {
        b.iter_batched(
            || {
                if queue
                    .peek_batch(EVENTS, usize::MAX)
                    .expect("peek")
                    .is_none()
                {
                    queue.commit(&batch, b"cp", b"x").expect("refill");
                }
            },
            |()| {
                let got = queue
                    .peek_batch(EVENTS, usize::MAX)
                    .expect("peek")
                    .expect("events queued");
                queue.take(&got);
                queue.ack(&got).expect("ack");
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_queue);
criterion_main!(benches);
