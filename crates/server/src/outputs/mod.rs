//! Outputs: what consumes committed flushes — the forwarder to the upstream
//! tier and the alarm evaluator with its notifications.

pub mod alarms;
pub mod forwarder;
