//! The dispatcher's integration tests, on both backends: one binary, so that helpers
//! are shared rather than copied.

mod dispatch;
mod sequence;
mod upcasting;

/// Who decides in the tests.
pub fn operator() -> cairn_dispatch::Operator {
    cairn_dispatch::Operator {
        actor: cairn_types::Actor::Service("test-operator".to_owned()),
        correlation_id: cairn_types::CorrelationId::new_v7(),
    }
}

/// A reason, for the tests' decisions.
#[track_caller]
pub fn reason(text: &str) -> cairn_types::Reason {
    cairn_types::Reason::parse(text).expect("a valid reason")
}
