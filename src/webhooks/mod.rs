//! Webhooks, exactly as OpenAI sends them: batch events in OpenAI's event
//! envelope, signed with Standard Webhooks headers, delivered at least once
//! from an outbox that terminal transitions write in their own transaction.

pub mod address;
pub mod dispatcher;
pub mod signing;
