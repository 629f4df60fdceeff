//! Online preflight (placeholder; being written).
