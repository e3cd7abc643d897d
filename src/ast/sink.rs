//! Where a Stasis subscription of the shim delivers: set before subscribing, cleared after
//! unsubscribing (which waits for a callback under way), read by the callback.

use std::sync::{Arc, RwLock};

pub struct Sink<T: ?Sized>(RwLock<Option<Arc<T>>>);

impl<T: ?Sized> Sink<T> {
    pub const fn new() -> Sink<T> {
        Sink(RwLock::new(None))
    }

    pub fn set(&self, sink: Option<Arc<T>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = sink;
    }

    pub fn get(&self) -> Option<Arc<T>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
