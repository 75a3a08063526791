//! RabbitMQ for the platform: a self-healing connection, the alerts exchange, and a
//! publisher that treats a message as sent only once the broker has confirmed it.
//!
//! Alerts go to a durable topic exchange; subscribers bind their own queues to it.
//! [`ConfirmedPublisher::publish`] sends persistent, `mandatory` messages on a channel in
//! confirm mode and returns only after the broker's ack, so a caller (the alert outbox
//! relay) marks a message sent only when RabbitMQ really has it.
//! [`ConfirmedPublisher::publish_all`] does the same for many messages at once: it sends
//! them all before it waits, so a batch costs one round trip rather than one per message.

use std::sync::Arc;

use fraud_config::RabbitMqConfig;
use fraud_service::{Probe, ProbeFuture};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
};
use tokio::sync::Mutex;

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// RabbitMQ failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to connect to RabbitMQ: {0}")]
    Connect(lapin::Error),
    #[error("RabbitMQ {operation} failed: {source}")]
    Operation {
        operation: &'static str,
        source: lapin::Error,
    },
    #[error(
        "the broker returned message `{message_id}`: no queue is bound for routing key `{routing_key}`"
    )]
    Unroutable {
        message_id: String,
        routing_key: String,
    },
    #[error("the broker refused (nacked) message `{message_id}`")]
    Nacked { message_id: String },
    #[error("not sent: the channel failed on an earlier message of the batch")]
    NotSent,
    #[error("the message cannot be sent: its {what} is invalid ({detail})")]
    Invalid { what: &'static str, detail: String },
}

fn operation(operation: &'static str) -> impl FnOnce(lapin::Error) -> Error {
    move |source| Error::Operation { operation, source }
}

/// A lazily opened connection that is reopened when it has dropped.
pub struct AmqpHandle {
    url: String,
    connection_name: String,
    connection: Mutex<Option<Arc<Connection>>>,
}

impl AmqpHandle {
    /// A handle for `config`; `connection_name` shows in RabbitMQ's management UI.
    pub fn new(config: &RabbitMqConfig, connection_name: &str) -> Self {
        Self {
            url: config.url.expose().clone(),
            connection_name: connection_name.to_owned(),
            connection: Mutex::new(None),
        }
    }

    /// The open connection, (re)connecting when there is none or it has dropped.
    pub async fn connection(&self) -> Result<Arc<Connection>, Error> {
        let mut current = self.connection.lock().await;
        if let Some(connection) = current.as_ref()
            && connection.status().connected()
        {
            return Ok(Arc::clone(connection));
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(self.connection_name.clone().into());
        let connection = Arc::new(
            Connection::connect(&self.url, properties)
                .await
                .map_err(Error::Connect)?,
        );
        *current = Some(Arc::clone(&connection));
        Ok(connection)
    }

    /// A new channel on the connection.
    pub async fn channel(&self) -> Result<Channel, Error> {
        self.connection()
            .await?
            .create_channel()
            .await
            .map_err(operation("channel open"))
    }
}

/// Declares `exchange` as a durable topic exchange (idempotent).
pub async fn declare_topic_exchange(channel: &Channel, exchange: &str) -> Result<(), Error> {
    channel
        .exchange_declare(
            short_string("exchange", exchange)?,
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(operation("exchange declare"))
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct OutgoingMessage<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// Becomes the AMQP `message_id`; consumers deduplicate on it.
    pub message_id: &'a str,
    pub content_type: &'a str,
    pub payload: &'a [u8],
    /// Extra headers, e.g. the W3C `traceparent`.
    pub headers: Vec<(String, String)>,
}

/// Publishes on a channel in confirm mode.
pub struct ConfirmedPublisher {
    channel: Channel,
}

impl ConfirmedPublisher {
    /// Opens a channel on `handle` and switches it to publisher confirms.
    pub async fn open(handle: &AmqpHandle) -> Result<Self, Error> {
        let channel = handle.channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(operation("confirm select"))?;
        Ok(Self { channel })
    }

    /// The channel, e.g. to declare topology on it.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Whether the channel can still publish (it closes with its connection).
    pub fn is_usable(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes a persistent, mandatory message and waits for the broker's confirm.
    /// Succeeds only on an ack for a message that was routed to at least one queue.
    pub async fn publish(&self, message: &OutgoingMessage<'_>) -> Result<(), Error> {
        let confirmation = self
            .send(message)
            .await?
            .await
            .map_err(operation("publisher confirm"))?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(Error::Unroutable {
                message_id: message.message_id.to_owned(),
                routing_key: message.routing_key.to_owned(),
            }),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(Error::Nacked {
                message_id: message.message_id.to_owned(),
            }),
        }
    }

    /// Sends one persistent, mandatory message; the returned future is its confirm.
    async fn send(&self, message: &OutgoingMessage<'_>) -> Result<PublisherConfirm, Error> {
        let mut headers = std::collections::BTreeMap::new();
        for (name, value) in &message.headers {
            headers.insert(
                short_string("header name", name)?,
                AMQPValue::LongString(LongString::from(value.as_bytes())),
            );
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_message_id(short_string("message id", message.message_id)?)
            .with_content_type(short_string("content type", message.content_type)?)
            .with_headers(FieldTable::from(headers));
        self.channel
            .basic_publish(
                short_string("exchange", message.exchange)?,
                short_string("routing key", message.routing_key)?,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                message.payload,
                properties,
            )
            .await
            .map_err(operation("publish"))
    }
}

/// `text` as an AMQP short string (at most 255 bytes): an error, not the client's
/// panic, for one that is too long, so one bad message cannot bring a publisher down.
fn short_string(what: &'static str, text: &str) -> Result<ShortString, Error> {
    ShortString::try_new(text).map_err(|error| Error::Invalid {
        what,
        detail: error.to_string(),
    })
}

/// What the broker did with a message it confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// At least one queue took the message.
    ToQueues,
    /// No queue is bound for its routing key: the broker returned it (it is `mandatory`)
    /// and then acked it. Nobody received it.
    Nowhere,
}

impl ConfirmedPublisher {
    /// Publishes every message (persistent, `mandatory`, like [`Self::publish`]) without
    /// waiting in between, then waits for every confirm. One outcome per message, in
    /// order: `Ok` once the broker acked it (saying whether a queue took it), `Err` when
    /// it was nacked, could not be sent at all (`Invalid`: a name longer than AMQP
    /// allows), or its fate is unknown (the channel failed before its confirm; it may or
    /// may not have reached the broker). After an `Err` other than `Nacked` or `Invalid`
    /// the channel is unusable; the remaining messages are not sent.
    ///
    /// A returned message is recognised by its `message_id`, not by which confirm
    /// carried it: the broker may ack several messages at once, and the client then
    /// attaches a return to whichever of them it completes first. Message ids must
    /// therefore be distinct within one call.
    pub async fn publish_all(
        &self,
        messages: &[OutgoingMessage<'_>],
    ) -> Vec<Result<Routed, Error>> {
        debug_assert!(
            {
                let mut ids: Vec<&str> =
                    messages.iter().map(|message| message.message_id).collect();
                ids.sort_unstable();
                ids.windows(2).all(|pair| pair[0] != pair[1])
            },
            "message ids must be distinct within one publish_all"
        );
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            match self.send(message).await {
                Ok(confirm) => pending.push(Ok(confirm)),
                // Refused before anything was sent: the channel is fine.
                Err(error @ Error::Invalid { .. }) => pending.push(Err(error)),
                Err(error) => {
                    pending.push(Err(error));
                    break;
                }
            }
        }
        let mut confirmations = Vec::with_capacity(messages.len());
        let mut returned: std::collections::HashSet<String> = std::collections::HashSet::new();
        for sent in pending {
            let confirmation = match sent {
                Ok(confirm) => confirm.await.map_err(operation("publisher confirm")),
                Err(error) => Err(error),
            };
            let confirmation = confirmation.map(|confirmation| {
                let acked = confirmation.is_ack();
                if let Some(message) = confirmation.take_message()
                    && let Some(id) = message.delivery.properties.message_id()
                {
                    returned.insert(id.to_string());
                }
                acked
            });
            confirmations.push(confirmation);
        }
        let mut outcomes: Vec<Result<Routed, Error>> = messages
            .iter()
            .zip(confirmations)
            .map(|(message, confirmation)| match confirmation {
                Ok(true) if returned.contains(message.message_id) => Ok(Routed::Nowhere),
                Ok(true) => Ok(Routed::ToQueues),
                Ok(false) => Err(Error::Nacked {
                    message_id: message.message_id.to_owned(),
                }),
                Err(error) => Err(error),
            })
            .collect();
        // Messages never sent because the channel failed first.
        while outcomes.len() < messages.len() {
            outcomes.push(Err(Error::NotSent));
        }
        outcomes
    }
}

/// Ready when a connection to RabbitMQ is open (opening one if needed).
pub struct AmqpProbe {
    handle: Arc<AmqpHandle>,
}

impl AmqpProbe {
    pub fn new(handle: Arc<AmqpHandle>) -> Self {
        Self { handle }
    }
}

impl Probe for AmqpProbe {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn check(&self) -> ProbeFuture<'_> {
        Box::pin(async move {
            self.handle
                .connection()
                .await
                .map(|_| ())
                .map_err(|error| error.to_string())
        })
    }
}
