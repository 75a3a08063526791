//! `/readyz` follows a real server going away and coming back, without a restart.

use std::time::Duration;

use fraud_service::Shutdown;
use fraud_service::startup::Service;
use fraud_testkit::{PrivateRedis, get_json, local_settings, wait_until};

const DEADLINE: Duration = Duration::from_secs(20);

async fn readiness_of(url: &str) -> Option<(u16, bool)> {
    let (status, body) = get_json(url).await?;
    let redis_ok = body["checks"]
        .as_array()?
        .iter()
        .find(|check| check["name"] == "redis")?["ok"]
        .as_bool()?;
    Some((status, redis_ok))
}

#[tokio::test]
async fn readyz_is_503_while_redis_is_down_and_200_once_it_is_back() {
    let mut redis = PrivateRedis::new();
    let mut settings = local_settings();
    settings.redis.url = fraud_config::Secret::new(redis.url());
    settings.ingest.listen = "127.0.0.1:0".parse().unwrap();
    settings.service.probe_timeout_ms = 500;
    let own = fraud_testkit::unique_name("ingest-readiness");
    settings.lake.root = std::env::temp_dir().join(&own).display().to_string();
    settings.lake.writer_group = own;

    let shutdown = Shutdown::new(Duration::from_secs(5));
    let app = ingest::App::build(&settings, shutdown.clone())
        .await
        .expect("the service starts while Redis is down");
    let readyz = format!("http://127.0.0.1:{}/readyz", app.port());
    let running = tokio::spawn(app.run_until_stopped());

    wait_until(DEADLINE, "503 while Redis has never been up", || {
        let url = readyz.clone();
        async move { readiness_of(&url).await == Some((503, false)) }
    })
    .await;

    redis.start();
    wait_until(DEADLINE, "200 once Redis is up", || {
        let url = readyz.clone();
        async move { readiness_of(&url).await == Some((200, true)) }
    })
    .await;

    redis.kill();
    wait_until(DEADLINE, "503 after Redis died", || {
        let url = readyz.clone();
        async move { readiness_of(&url).await == Some((503, false)) }
    })
    .await;

    redis.start();
    wait_until(DEADLINE, "200 again once Redis is back", || {
        let url = readyz.clone();
        async move { readiness_of(&url).await == Some((200, true)) }
    })
    .await;

    shutdown.trigger();
    running
        .await
        .expect("the service task")
        .expect("a clean stop");
}
