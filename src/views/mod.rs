//! Live views (PROTOCOL §9): filtered, sorted, paged windows onto a table.

pub mod value;
