//! A step's statements, held in one allocation: the same container as a
//! table's column names (`pg::names::NameList`, each text ended by a NUL
//! byte, serialized as a list of strings).
//!
//! A 25,000-table schema has about 250,000 statements in 145,000 steps.
//! Held as a `Vec<String>` each, that was about 400,000 small allocations
//! made during the schema load among objects freed right after: a tenth of
//! the run's peak memory in headers, and the rest scattered over pages the
//! allocator could not give back. The loaders build an object's statements
//! in one of these and the plan moves it into the step, never copying the
//! text. A pure data type: no SQL is built or run here.

/// Statements, in order, in one allocation (see the module's doc).
pub type Statements = crate::pg::names::NameList;
