//! Where the Stasis callback delivers events: for now every event is counted per application
//! (forwarding to RabbitMQ arrives with the AMQP subsystem).

use std::sync::Arc;

use res_scale_core::consul::apps::EventCounters;

use crate::ast::stasis::{EventSink, Message};

pub struct CountingSink(pub Arc<EventCounters>);

impl EventSink for CountingSink {
    fn event(&self, app: &str, _message: &Message<'_>) {
        self.0.count(app);
    }
}
