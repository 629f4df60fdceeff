//! libpq connection-string parsing (URI and key=value) and environment fallback.
//! (Being written; see EndpointConfig::parse.)

use super::endpoint::EndpointConfig;
use crate::error::{MigrationError, Result};

pub(crate) fn parse(_conninfo: &str, _env: &dyn Fn(&str) -> Option<String>) -> Result<EndpointConfig> {
    Err(MigrationError::Unsupported("conninfo parsing".into()))
}
