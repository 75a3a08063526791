//! A subscriber of a test's own: a queue bound to the test's alerts exchange, on a
//! direct connection to the local RabbitMQ.

use std::time::Duration;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(30);

/// A queue of the test's own bound to the alerts exchange.
pub struct Subscriber {
    pub channel: Channel,
    consumer: Consumer,
    exchange: String,
    pub queue: String,
    _connection: Connection,
}

impl Subscriber {
    /// Declares the exchange (as the relay does) and an exclusive queue bound with
    /// `pattern`, on a direct connection to RabbitMQ.
    pub async fn bind(exchange: &str, pattern: &str) -> Subscriber {
        let url = crate::local_settings().rabbitmq.url.expose().clone();
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("a channel");
        fraud_amqp::declare_topic_exchange(&channel, exchange)
            .await
            .expect("declare the exchange");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare a queue");
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the queue");
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        Subscriber {
            channel,
            consumer,
            exchange: exchange.to_owned(),
            queue: queue.name().as_str().to_owned(),
            _connection: connection,
        }
    }

    /// The next message (fails the test after 30 s).
    pub async fn next(&mut self) -> Delivery {
        tokio::time::timeout(DEADLINE, self.consumer.next())
            .await
            .expect("a message within the deadline")
            .expect("the consumer is open")
            .expect("a delivery")
    }

    /// The next `count` messages.
    pub async fn receive(&mut self, count: usize) -> Vec<Delivery> {
        let mut received = Vec::with_capacity(count);
        while received.len() < count {
            received.push(self.next().await);
        }
        received
    }

    /// Everything that arrives before a sentinel published now with `routing_key`
    /// (which the queue must match).
    pub async fn rest(&mut self, routing_key: &str) -> Vec<Delivery> {
        let sentinel = format!("sentinel-{}", Uuid::new_v4());
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default().with_message_id(sentinel.as_str().into()),
            )
            .await
            .expect("publish the sentinel");
        let mut rest = Vec::new();
        loop {
            let delivery = self.next().await;
            if message_id(&delivery) == sentinel {
                return rest;
            }
            rest.push(delivery);
        }
    }

    /// Binds a queue that refuses every message (`x-max-length` 0 with
    /// `reject-publish`: the broker nacks what it would route there); returns its name.
    pub async fn bind_refusing_queue(&self, pattern: &str) -> String {
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-length".into(), AMQPValue::LongInt(0));
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        let queue = self
            .channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .expect("declare the refusing queue");
        self.channel
            .queue_bind(
                queue.name().clone(),
                self.exchange.as_str().into(),
                pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the refusing queue");
        queue.name().as_str().to_owned()
    }

    /// Deletes the exchange (a test's clean-up).
    pub async fn delete_exchange(&self) {
        let _ = self
            .channel
            .exchange_delete(
                self.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
    }
}

/// The `message_id` of `delivery` (the alert id), empty when it has none.
pub fn message_id(delivery: &Delivery) -> String {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default()
}

/// The text header `name` of `delivery`, if present.
pub fn header(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    headers
        .inner()
        .iter()
        .find(|(key, _)| key.as_str() == name)
        .and_then(|(_, value)| match value {
            AMQPValue::LongString(text) => {
                Some(String::from_utf8_lossy(text.as_bytes()).into_owned())
            }
            _ => None,
        })
}
