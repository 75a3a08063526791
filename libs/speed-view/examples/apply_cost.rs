//! What applying costs Redis, per event: the speed layer's workload without Kafka.
//!
//! `cargo run --release -p fraud-speed-view --example apply_cost [customers] [rounds]
//! [batch] [runs per call] [copies]` against the local Redis (`deploy/dev up
//! --servers-only`; `FRAUD_REDIS__URL` overrides): `rounds` times, one event for each of
//! `customers` customers, applied in batches of `batch` customers (the speed layer's
//! batches hold about 4,000) with `runs per call` customers per write call, by a writer
//! that keeps copies of the states it wrote (`copies` 1, the default, as the speed layer
//! does) or reads every state (0), so the states grow to `rounds` events as in
//! `deploy/dev bench speed`. Prints the wall time and the Redis CPU (`INFO
//! commandstats`, every command) per event, then deletes its keys. Redis is shared: run
//! it on a quiet machine, and read it as a comparison.

use std::collections::BTreeMap;
use std::time::Instant;

use fraud_speed_view::{Generation, Record, StateWriter, Tuning, WINDOW_MS, customer_key, digest};
use redis::AsyncCommands;

/// The speed layer's allocator, so the client side costs what it costs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TUNING: Tuning = Tuning {
    retention_ms: WINDOW_MS + 5 * 60 * 1000,
    idle_ttl_ms: 3_600_000,
    increments_ttl_ms: 172_800_000,
};

/// `usec` of `INFO commandstats` per command. A script's call counts whole under
/// `evalsha`, and the commands it runs count again under their own names.
async fn redis_usec(connection: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let usec = rest
                .split("usec=")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), usec))
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1).map(|arg| arg.parse::<usize>());
    let customers = args.next().and_then(Result::ok).unwrap_or(20_000);
    let rounds = args.next().and_then(Result::ok).unwrap_or(20);
    let batch = args.next().and_then(Result::ok).unwrap_or(4_000).max(1);
    let runs_per_call = args
        .next()
        .and_then(Result::ok)
        .unwrap_or(fraud_speed_view::apply::RUNS_PER_CALL);
    let copies = args.next().and_then(Result::ok).unwrap_or(1) != 0;
    let url = std::env::var("FRAUD_REDIS__URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url).expect("a Redis URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is up");
    let prefix = format!("apply-cost-{}:", std::process::id());
    let keys: Vec<String> = (0..customers)
        .map(|c| customer_key(&prefix, &format!("customer-{c}")))
        .collect();
    let mut writer = StateWriter::with_runs_per_call(runs_per_call);
    if copies {
        writer = writer.with_copies(customers, std::time::Duration::from_secs(3_600));
    }
    let generation = Generation::random();
    let start_ts: i64 = 1_735_689_600_000;
    let mut offset = 0i64;
    let (mut total_wall, mut events) = (0f64, 0u64);
    let mut total_usec: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..rounds {
        let runs: Vec<(String, Vec<Record>)> = keys
            .iter()
            .enumerate()
            .map(|(c, key)| {
                offset += 1;
                let record = Record {
                    offset,
                    // A minute apart per round, out of order now and then.
                    ts: start_ts + (round as i64) * 60_000 + ((c * 7919) % 50_000) as i64,
                    amount: 1_000 + (c % 977) as i64,
                    vendor: digest(&format!("vendor-{}", (c + round) % 5)),
                    transaction: digest(&format!("txn-{c}-{round}")),
                };
                (key.clone(), vec![record])
            })
            .collect();
        let usec_before = redis_usec(&mut connection).await;
        let started = Instant::now();
        for chunk in runs.chunks(batch) {
            let outcomes = writer
                .apply(&mut connection, generation, None, TUNING, chunk)
                .await
                .expect("apply");
            assert_eq!(outcomes.len(), chunk.len());
        }
        let wall = started.elapsed().as_secs_f64();
        let usec_after = redis_usec(&mut connection).await;
        for (name, usec) in usec_after {
            let delta = usec - usec_before.get(&name).copied().unwrap_or(0);
            *total_usec.entry(name).or_default() += delta;
        }
        total_wall += wall;
        events += customers as u64;
        println!(
            "round {:>3}: {:>6.2} µs wall per event ({} events held each)",
            round + 1,
            wall * 1e6 / customers as f64,
            round + 1
        );
    }
    let per_event = |name: &str| total_usec.get(name).copied().unwrap_or(0) as f64 / events as f64;
    println!(
        "{runs_per_call} runs per call, copies {copies}; all {events} events, per event: \
         {:.2} µs wall; Redis CPU {:.2} µs reading (GET), {:.2} µs in write scripts (of \
         which GETRANGE {:.2}, SET {:.2})",
        total_wall * 1e6 / events as f64,
        per_event("get"),
        per_event("evalsha"),
        per_event("getrange"),
        per_event("set"),
    );
    for chunk in keys.chunks(1_000) {
        let _: () = connection.del(chunk).await.expect("DEL");
    }
}
