//! Removing a test's or a benchmark's Redis keys from the shared local server.

use std::time::Duration;

/// Deletes every key under `prefix` on the Redis at `url`; how many there were. `SCAN`
/// pages of 20,000 keys (the shared server may hold millions of other keys, which the
/// default page of 10 would take minutes to walk), each page deleted as it comes with
/// `UNLINK` (freed off Redis' main thread), with a minute for each round trip.
pub async fn delete_prefix(url: &str, prefix: &str) -> redis::RedisResult<u64> {
    let client = redis::Client::open(url)?;
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let pattern = format!("{prefix}*");
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(20_000)
            .query_async(&mut connection)
            .await?;
        if !keys.is_empty() {
            let removed: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut connection)
                .await?;
            deleted += removed;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
