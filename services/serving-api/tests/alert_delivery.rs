//! The whole alert path with real servers: transactions on Kafka, the real speed layer,
//! the serving API's evaluation, the outbox relay, and a subscriber's queue bound to the
//! alerts exchange, the Server-Sent Event stream and the history, all with one alert of
//! the same id for the one episode.

mod common;

use std::time::Duration;

use common::{READ_KEY, ServingTest, get, now_millis, transaction};
use fraud_testkit::amqp::{Subscriber, message_id};
use fraud_testkit::sse::SseClient;

const MINUTE: i64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_crossing_the_limit_raises_one_alert_on_the_queue_the_stream_and_the_history() {
    let test = ServingTest::create("alert-delivery").await;
    // The batch layer knows the customer at shop-1: only the window rule is in play. (A
    // first 2000.00 at a new vendor would raise the new-vendor alert too, every event of
    // a speed batch being judged.)
    sqlx::query("INSERT INTO batch_vendors VALUES ('crosser', 'shop-1', now())")
        .execute(&test.pool)
        .await
        .expect("a known vendor");
    let exchange = test.settings.rabbitmq.alerts_exchange.clone();
    let mut everything = Subscriber::bind(&exchange, "alert.#").await;
    let mut high = Subscriber::bind(&exchange, "alert.high.*").await;
    let speed = test.start_speed().await;
    let serving = test.start_serving().await;
    let mut stream = SseClient::connect(&serving.base, READ_KEY, "lastEventId=0", None).await;

    // 5000.00 in the window is not over the limit; one more cent is. The speed layer
    // may apply them in one batch or several: either way one episode, one alert, and
    // its observed sum is the one that crossed.
    let t = now_millis() - 10 * MINUTE;
    test.produce(&[
        transaction("d-1", "crosser", "shop-1", 200_000, t),
        transaction("d-2", "crosser", "shop-1", 300_000, t + MINUTE),
    ])
    .await;
    test.produce(&[transaction("d-3", "crosser", "shop-1", 1, t + 2 * MINUTE)])
        .await;
    // And a later firing event in the same episode raises nothing new.
    test.produce(&[transaction("d-4", "crosser", "shop-1", 5, t + 3 * MINUTE)])
        .await;

    let delivery = everything.next().await;
    assert_eq!(
        delivery.routing_key.as_str(),
        "alert.high.sum-30m-over-limit"
    );
    let body: serde_json::Value = serde_json::from_slice(&delivery.data).expect("JSON");
    let alert_id = message_id(&delivery);
    assert_eq!(body["alertId"], alert_id.as_str());
    assert_eq!(body["customerId"], "crosser");
    assert_eq!(body["rule"], "sum-30m-over-limit");
    assert_eq!(body["severity"], "high");
    assert_eq!(body["threshold"], "5000.00");
    // The episode starts at the event that crossed (or a later one in the same batch):
    // never at 5000.00.
    let observed = body["observed"].as_str().expect("a decimal string");
    assert!(
        observed == "5000.01" || observed == "5000.06",
        "observed {observed}"
    );
    assert_eq!(*delivery.properties.delivery_mode(), Some(2));

    let on_high = high.next().await;
    assert_eq!(message_id(&on_high), alert_id);

    let event = stream.next_event().await.expect("the stream is open");
    assert_eq!(event.event, "alert");
    assert_eq!(event.data["alertId"], alert_id.as_str());

    // Once the last update is published and evaluated, the history holds this one
    // alert only: the later firing event extended the episode.
    let last_update = || async {
        let kafka = test.settings.kafka.clone();
        let topic = test.settings.kafka.window_updates_topic.clone();
        let records =
            tokio::task::spawn_blocking(move || fraud_testkit::kafka::read_all(&kafka, &topic))
                .await
                .expect("read the updates");
        records.iter().any(|record| {
            serde_json::from_slice::<serde_json::Value>(&record.value)
                .is_ok_and(|update| update["asOf"] == t + 3 * MINUTE)
        })
    };
    fraud_testkit::wait_until(Duration::from_secs(30), "the last update", last_update).await;
    test.caught_up().await;
    // On a loaded machine a read can wait longer than the pool's acquire timeout and
    // answer 503 (retry later): ask until it answers.
    let page = fraud_testkit::poll_for(Duration::from_secs(30), "the history", || async {
        let (status, page) = get(
            &serving.base,
            "/v1/alerts?customerId=crosser",
            Some(READ_KEY),
        )
        .await;
        assert!(status == 200 || status == 503, "status {status}: {page}");
        (status == 200).then_some(page)
    })
    .await;
    let listed: Vec<&str> = page["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|alert| alert["alertId"].as_str().expect("an id"))
        .collect();
    assert_eq!(listed, vec![alert_id.as_str()], "one alert for the episode");

    serving.shutdown.trigger();
    speed.trigger();
    everything.delete_exchange().await;
    test.remove().await;
}
