//! TEMPORARY stand-in until the TLS-capable connector lands.
use crate::config::{EndpointConfig, Host};
use crate::error::{MigrationError, Result};

pub async fn connect(ep: &EndpointConfig, label: &str) -> Result<tokio_postgres::Client> {
    let mut c = tokio_postgres::Config::new();
    for (i, h) in ep.hosts.iter().enumerate() {
        match h {
            Host::Tcp(s) => c.host(s),
            Host::Unix(p) => c.host_path(p),
        };
        c.port(ep.port_for(i));
    }
    c.user(&ep.user).dbname(&ep.dbname);
    if let Some(p) = &ep.password {
        c.password(p.expose());
    }
    c.application_name("pg_dbmigrator");
    let (client, conn) = tokio::time::timeout(ep.connect_timeout, c.connect(tokio_postgres::NoTls))
        .await
        .map_err(|_| MigrationError::Connect {
            endpoint: label.into(),
            target: ep.redacted(),
            reason: "timeout".into(),
            db: None,
        })?
        .map_err(|e| MigrationError::Connect {
            endpoint: label.into(),
            target: ep.redacted(),
            reason: crate::error::client_message(&e),
            db: crate::error::db_info(&e),
        })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}
