//! One OpenTelemetry trace per correlation id.
//!
//! cairn's `tracing` spans are exported by OTLP when the binary installs an
//! OpenTelemetry layer (see `cairn --otlp-endpoint`). A request's correlation id is a
//! UUID, 16 bytes like a trace id, so the spans of one correlation id form one trace
//! whose id *is* the correlation id: what `cairn trace ID` shows and what a tracing
//! backend shows are found by the same id.
//!
//! The spans that begin a hop on their own (an HTTP request, a workflow step) call
//! [`join_trace`]. A caller's `traceparent` makes the request a child of the caller's
//! span; without one, the span starts the trace, its trace id taken from the
//! correlation id by [`CorrelationIds`], the id generator the binary installs. With no
//! OpenTelemetry layer installed, [`join_trace`] does nothing.

use std::cell::Cell;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

thread_local! {
    /// The trace id the next root span built on this thread takes.
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Random span ids, and trace ids taken from the correlation id of the span being
/// started by [`join_trace`] (random ones for any other root span).
#[derive(Debug, Default)]
pub struct CorrelationIds {
    random: RandomIdGenerator,
}

impl IdGenerator for CorrelationIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .with(Cell::take)
            .unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.random.new_span_id()
    }
}

/// Puts `span` in the trace of `correlation_id`: under `parent` (a caller's span id,
/// from its `traceparent` with the same trace id) or as the trace's root. Call it
/// right after creating the span, before entering it. Returns the span's own
/// OpenTelemetry span id when one is being exported, for the response's
/// `traceparent`.
pub fn join_trace(
    span: &tracing::Span,
    correlation_id: uuid::Uuid,
    parent: Option<[u8; 8]>,
) -> Option<[u8; 8]> {
    let trace_id = TraceId::from_bytes(*correlation_id.as_bytes());
    match parent
        .map(SpanId::from_bytes)
        .filter(|id| *id != SpanId::INVALID)
    {
        Some(parent) => {
            let remote = SpanContext::new(
                trace_id,
                parent,
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            );
            // Fails only when no OpenTelemetry layer is installed or the span is
            // disabled: then there is nothing to join.
            span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
                .ok()?;
        }
        None => NEXT_TRACE_ID.with(|next| next.set(Some(trace_id))),
    }
    // Building the span now, on this thread, hands it the trace id set above.
    let context = span.context();
    NEXT_TRACE_ID.with(|next| next.set(None));
    let own = context.span().span_context().clone();
    (own.is_valid() && own.trace_id() == trace_id).then(|| own.span_id().to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_opentelemetry_layer_joining_a_trace_does_nothing() {
        let span = tracing::info_span!("test");
        assert_eq!(join_trace(&span, uuid::Uuid::now_v7(), None), None);
        assert_eq!(NEXT_TRACE_ID.with(Cell::get), None);
    }

    #[test]
    fn the_id_generator_hands_out_a_requested_trace_id_once() {
        let ids = CorrelationIds::default();
        let wanted = TraceId::from_bytes(*uuid::Uuid::now_v7().as_bytes());
        NEXT_TRACE_ID.with(|next| next.set(Some(wanted)));
        assert_eq!(ids.new_trace_id(), wanted);
        assert_ne!(ids.new_trace_id(), wanted);
    }
}
