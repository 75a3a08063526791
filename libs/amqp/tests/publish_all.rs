//! `publish_all` against the real RabbitMQ: every message of a batch gets its own
//! outcome, and a returned (unroutable) message is told apart from a routed one even
//! when the broker acks many at once.

use fraud_amqp::{AmqpHandle, ConfirmedPublisher, OutgoingMessage, Routed};
use fraud_testkit::{local_settings, unique_name};
use lapin::options::{ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

#[tokio::test]
async fn a_batch_of_routed_and_unroutable_messages_gets_one_outcome_each() {
    let settings = local_settings();
    let handle = AmqpHandle::new(&settings.rabbitmq, "fraud-amqp-test");
    let publisher = ConfirmedPublisher::open(&handle)
        .await
        .expect("a publisher");
    let exchange = unique_name("amqp-test");
    fraud_amqp::declare_topic_exchange(publisher.channel(), &exchange)
        .await
        .expect("declare the exchange");
    let queue = publisher
        .channel()
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare a queue");
    publisher
        .channel()
        .queue_bind(
            queue.name().clone(),
            exchange.as_str().into(),
            "routed.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the queue");

    // A pattern that is not simply "all routed then all returned".
    let routed = |index: usize| index % 3 != 1;
    let ids: Vec<String> = (0..60).map(|index| format!("message-{index}")).collect();
    let keys: Vec<&str> = (0..60)
        .map(|index| {
            if routed(index) {
                "routed.x"
            } else {
                "nowhere.x"
            }
        })
        .collect();
    let messages: Vec<OutgoingMessage<'_>> = ids
        .iter()
        .zip(&keys)
        .map(|(id, key)| OutgoingMessage {
            exchange: &exchange,
            routing_key: key,
            message_id: id,
            content_type: "application/json",
            payload: b"{}",
            headers: vec![("traceparent".to_owned(), "00-x-y-01".to_owned())],
        })
        .collect();
    let outcomes = publisher.publish_all(&messages).await;
    assert_eq!(outcomes.len(), 60);
    for (index, outcome) in outcomes.iter().enumerate() {
        let expected = if routed(index) {
            Routed::ToQueues
        } else {
            Routed::Nowhere
        };
        match outcome {
            Ok(outcome) => assert_eq!(*outcome, expected, "message {index}"),
            Err(error) => panic!("message {index}: {error}"),
        }
    }
    let queued = publisher
        .channel()
        .queue_declare(
            queue.name().clone(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("inspect the queue");
    assert_eq!(
        queued.message_count(),
        40,
        "every routed message, nothing else"
    );

    // A routing key longer than AMQP allows fails that message alone.
    let long_key = "routed.".repeat(40);
    let invalid = OutgoingMessage {
        routing_key: &long_key,
        message_id: "too-long",
        ..messages[0].clone()
    };
    let around = OutgoingMessage {
        message_id: "around",
        ..messages[0].clone()
    };
    let outcomes = publisher
        .publish_all(&[messages[0].clone(), invalid, around])
        .await;
    assert!(
        matches!(outcomes[0], Ok(Routed::ToQueues)),
        "{:?}",
        outcomes[0]
    );
    assert!(
        matches!(outcomes[1], Err(fraud_amqp::Error::Invalid { .. })),
        "{:?}",
        outcomes[1]
    );
    assert!(
        matches!(outcomes[2], Ok(Routed::ToQueues)),
        "{:?}",
        outcomes[2]
    );
    assert!(publisher.is_usable());

    // The single-message form still tells the two apart.
    let unroutable = OutgoingMessage {
        routing_key: "nowhere.y",
        message_id: "single",
        ..messages[0].clone()
    };
    assert!(matches!(
        publisher.publish(&unroutable).await,
        Err(fraud_amqp::Error::Unroutable { .. })
    ));
    publisher
        .publish(&messages[0])
        .await
        .expect("a routed message is confirmed");

    let _ = publisher
        .channel()
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
}
