//! Everything that talks to PostgreSQL: connections (TLS), session settings,
//! quoting and catalog queries. All SQL of the crate lives under this module
//! or next to the stage that owns it, built with [`quote`].

pub mod catalog;
pub(crate) mod compact;
pub mod connect;
pub(crate) mod meter;
pub mod names;
pub mod pressure;
pub mod quote;
pub mod replication;
pub mod session;
pub mod sessions;
pub mod tls;
pub(crate) mod wire;

/// Whether `qualified` (a qualified, quoted name) names a relation, in one
/// round trip (an unnamed statement): the bookkeeping tables' and a
/// table's existence checks share it.
pub(crate) async fn relation_exists(
    client: &tokio_postgres::Client,
    qualified: &str,
) -> std::result::Result<bool, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
            &[(&qualified, tokio_postgres::types::Type::TEXT)],
        )
        .await?;
    Ok(rows.first().is_some_and(|r| r.get(0)))
}

/// Every row `sql` returns, handed to `f` as it arrives and dropped after:
/// a catalog answer of a row per table, held whole as rows before being
/// turned into something smaller, was the largest thing in memory at
/// 25,000 tables (its rows, and the read buffer they kept alive).
pub(crate) async fn each_row<P, I>(
    client: &tokio_postgres::Client,
    sql: &str,
    params: I,
    mut f: impl FnMut(tokio_postgres::Row),
) -> std::result::Result<(), tokio_postgres::Error>
where
    P: tokio_postgres::types::BorrowToSql,
    I: IntoIterator<Item = (P, tokio_postgres::types::Type)>,
    I::IntoIter: ExactSizeIterator,
{
    use futures::TryStreamExt;
    let rows = client.query_typed_raw(sql, params).await?;
    futures::pin_mut!(rows);
    while let Some(r) = rows.try_next().await? {
        f(r);
    }
    Ok(())
}

/// The first column (text) of every row `sql` returns for its one text
/// parameter, taken as the rows arrive: the copy's and the schema's
/// markers are a row per table or step.
pub(crate) async fn text_set(
    client: &tokio_postgres::Client,
    sql: &str,
    param: &str,
) -> std::result::Result<std::collections::BTreeSet<String>, tokio_postgres::Error> {
    let mut out = std::collections::BTreeSet::new();
    each_row(
        client,
        sql,
        [(param, tokio_postgres::types::Type::TEXT)],
        |r| {
            out.insert(r.get(0));
        },
    )
    .await?;
    Ok(out)
}

/// A statement run once that returns one row, in one round trip:
/// tokio-postgres's `query_one` with a `&str` prepares it first (a round
/// trip of its own, wasted across a distance on a statement used once).
/// Not exactly one row (a bug): tokio-postgres's own `query_one` runs it
/// again, for its own error.
pub(crate) async fn query_one_once(
    client: &tokio_postgres::Client,
    sql: &str,
) -> std::result::Result<tokio_postgres::Row, tokio_postgres::Error> {
    let mut rows = client.query_typed(sql, &[]).await?;
    match rows.len() {
        1 => Ok(rows.pop().expect("one row")),
        _ => client.query_one(sql, &[]).await,
    }
}
