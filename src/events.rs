//! Where the Stasis callback delivers events: each event of one of our applications is counted
//! and, when AMQP is enabled, turned into a message and queued for the publisher. Everything
//! here runs on Asterisk's threads and never waits: a full queue drops the event and counts it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use res_scale_core::amqp::event::{Counters, EventQueue};
use res_scale_core::consul::apps::EventCounters;

use crate::ast::stasis::{EventSink, Message};

pub struct Forwarder {
    pub apps: Arc<EventCounters>,
    /// Swapped when AMQP is switched on or off by a reload.
    pub queue: RwLock<Option<(EventQueue, Arc<Counters>)>>,
}

impl EventSink for Forwarder {
    fn event(&self, app: &str, message: &Message<'_>) {
        // Events of an application we no longer run (a late callback) are not forwarded.
        let Some((app, seq)) = self.apps.count(app) else { return };
        let queue = self.queue.read().unwrap_or_else(|e| e.into_inner());
        let Some((queue, counters)) = queue.as_ref() else { return };
        match message.to_event(app, seq) {
            Some(event) => {
                queue.push(event);
            }
            None => {
                counters.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
