//! `cairn import`: the seed stack's event store brought into cairn's log.
//!
//! The seed's `domain_events` (underscore type names, `stream_type`/`stream_id`,
//! `event_data`/`event_metadata`, `processing_error`) is read in order from a
//! read-only connection ([`source`]). Each event is decided without a database
//! ([`map`]): its type through the seed's names ([`map::RULES`]), its payload through
//! cairn's upcaster chain from the seed's shape, version 0 ([`shapes`]), so that what is
//! appended is proven to decode by the path every reader takes. An event that cannot
//! be mapped is recorded with its reason, never dropped. The target side ([`ledger`])
//! appends a page of events and moves the import's cursor in one unit of work, so an
//! interrupted import resumes without importing anything twice.
//!
//! The imported log starts with `import.started` on a `platform_admin` stream; the
//! binary signs a checkpoint of it before the first seed event is appended, and of
//! the head each time an import reaches the source's end.

pub mod ledger;
pub mod map;
pub mod shapes;
pub mod source;

pub use ledger::{ImportError, LeftOut, Standing, Start, Unit};
pub use map::{Mapped, Mapper, Mapping, SeedEvent, Streams, Unmapped, UnmappedKind};
pub use source::{Cursor, Order, Source, SourceError};
