//! Dependency ordering (being written).
