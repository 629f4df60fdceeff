//! TLS for tokio-postgres on rustls. (Being written.)
