//! [`MigrationConfigBuilder`]: a [`MigrationConfig`] from typed setters,
//! checked once at [`build`](MigrationConfigBuilder::build).
//!
//! The setters cannot fail (a connection string that does not parse is
//! kept as the first error and returned by `build`), so a configuration
//! reads as one chain, as a `reqwest::ClientBuilder` does.

use std::path::PathBuf;

use super::{
    CopyFormat, CopyMethod, CutoverMode, EndpointConfig, Filters, MigrationConfig, MigrationMode,
    Statistics, VerifyLevel,
};
use crate::error::{MigrationError, Result};

/// What names an endpoint for [`MigrationConfig::builder`]: a connection
/// string (URI or key=value, parsed as libpq does, so `PGPASSWORD`,
/// `PGPASSFILE` and `~/.pgpass` apply) or an [`EndpointConfig`] already
/// made.
pub trait IntoEndpoint {
    /// The endpoint; `which` ("source", "target") names it in errors.
    fn into_endpoint(self, which: &str) -> Result<EndpointConfig>;
}

impl IntoEndpoint for EndpointConfig {
    fn into_endpoint(self, _: &str) -> Result<EndpointConfig> {
        Ok(self)
    }
}

impl IntoEndpoint for &EndpointConfig {
    fn into_endpoint(self, _: &str) -> Result<EndpointConfig> {
        Ok(self.clone())
    }
}

impl IntoEndpoint for &str {
    fn into_endpoint(self, which: &str) -> Result<EndpointConfig> {
        EndpointConfig::parse_for(which, self)
    }
}

impl IntoEndpoint for String {
    fn into_endpoint(self, which: &str) -> Result<EndpointConfig> {
        EndpointConfig::parse_for(which, &self)
    }
}

impl IntoEndpoint for &String {
    fn into_endpoint(self, which: &str) -> Result<EndpointConfig> {
        EndpointConfig::parse_for(which, self)
    }
}

impl MigrationConfig {
    /// A builder for the migration from `source` to `target` (offline
    /// unless [`MigrationConfigBuilder::mode`] says otherwise), with the
    /// defaults of [`MigrationConfig::default`].
    ///
    /// ```
    /// use pg_dbmigrator::{MigrationConfig, VerifyLevel};
    /// let config = MigrationConfig::builder("host=old-db dbname=shop", "host=new-db dbname=shop")
    ///     .data_only(true)
    ///     .jobs(8)
    ///     .verify(VerifyLevel::Count)
    ///     .build()?;
    /// assert_eq!(config.jobs, 8);
    /// # Ok::<(), pg_dbmigrator::MigrationError>(())
    /// ```
    pub fn builder(source: impl IntoEndpoint, target: impl IntoEndpoint) -> MigrationConfigBuilder {
        let mut b = MigrationConfigBuilder {
            config: MigrationConfig::default(),
            error: None,
        };
        b.config.source = b.keep(source.into_endpoint("source"));
        b.config.target = b.keep(target.into_endpoint("target"));
        b
    }

    /// [`MigrationConfig::builder`] for an offline migration (one copy of
    /// a database nobody writes to meanwhile).
    pub fn offline(source: impl IntoEndpoint, target: impl IntoEndpoint) -> MigrationConfigBuilder {
        Self::builder(source, target).mode(MigrationMode::Offline)
    }

    /// [`MigrationConfig::builder`] for an online migration: copy, then
    /// stream the source's changes until the cutover (manual unless
    /// [`MigrationConfigBuilder::cutover`] says otherwise).
    pub fn online(source: impl IntoEndpoint, target: impl IntoEndpoint) -> MigrationConfigBuilder {
        Self::builder(source, target).mode(MigrationMode::Online)
    }
}

/// Builds a [`MigrationConfig`]; made by [`MigrationConfig::builder`].
/// Each setter sets the field of the same name (see [`MigrationConfig`]).
#[derive(Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct MigrationConfigBuilder {
    config: MigrationConfig,
    /// The first error met by a setter, returned by `build`.
    error: Option<MigrationError>,
}

/// Setters that store their argument in the field of the same name.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = value;
                self
            }
        )*
    };
}

/// Setters of `Option` fields: the argument is the value when set.
macro_rules! optional_setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = Some(value.into());
                self
            }
        )*
    };
}

impl MigrationConfigBuilder {
    fn keep<T>(&mut self, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        }
    }

    setters! {
        /// Offline or online.
        mode: MigrationMode;
        /// Rows only, into a target whose schema already exists.
        data_only: bool;
        /// Parallel COPY workers (at least 1).
        jobs: usize;
        /// Where the statistics come from (default: carried where the
        /// target can import them).
        statistics: Statistics;
        /// The cap on the source's read rate, bytes a second (`None`: none).
        max_rate: Option<u64>;
        /// Server to server, or through an archive in `dump_path`.
        copy_method: CopyMethod;
        /// zstd level of the archive with `CopyMethod::Dump` (1 to 22).
        compress_level: i32;
        /// All the patterns at once (replaces what `schema`, `table`... added).
        filters: Filters;
        /// Binary or text COPY.
        copy_format: CopyFormat;
        /// Copy large objects (default on).
        large_objects: bool;
        /// What is compared once the copy is done.
        verify: VerifyLevel;
        /// Continue the run recorded in the resume token.
        resume: bool;
        /// Discard the resume token and half-built target data, then start over.
        force_clean: bool;
        /// Stop rather than copy the rest on a new snapshot when the snapshot's session is lost.
        strict_snapshot: bool;
        /// Create the roles the schema names that the target lacks.
        roles: bool;
        /// With `roles`: copy their password hashes too.
        role_passwords: bool;
        /// Leave owners out.
        no_owner: bool;
        /// Leave privileges out.
        no_acl: bool;
        /// Leave subscriptions out.
        no_subscriptions: bool;
        /// Leave security labels out.
        no_security_labels: bool;
        /// Leave columns' compression methods out.
        no_toast_compression: bool;
        /// Put every object in the target database's default tablespace.
        no_tablespaces: bool;
        /// Online: manual (asked for) or automatic cutover.
        cutover: CutoverMode;
        /// Online, automatic cutover: the lag in bytes under which it cuts over.
        cutover_lag_bytes: u64;
        /// Online: give tables without a usable replica identity one.
        fix_replica_identity: bool;
        /// Online: make the source read-only at the cutover (default on).
        fence: bool;
        /// Online: keep the replication slot after the cutover.
        keep_slot: bool;
        /// Online: keep the publication after the cutover.
        keep_publication: bool;
        /// Online: stream the new server's changes back to the old source after the cutover.
        fallback: bool;
        /// Write no `<dump_path>.summary.json`.
        no_summary: bool;
        /// The whole cluster: globals, then every database (source and
        /// target name each server's maintenance database).
        all_databases: bool;
        /// With `all_databases`: change differing roles and tablespaces.
        roles_overwrite: bool;
        /// With `all_databases`: create roles without their passwords.
        no_role_passwords: bool;
    }

    optional_setters! {
        /// Sessions building indexes beside the copy (default: as `jobs`).
        index_jobs: usize;
        /// Cut tables bigger than this many bytes into page ranges (0: never).
        split_bytes: u64;
        /// Pause the copy while the source is under pressure (see
        /// [`super::SourcePressure`]; `SourcePressure::default()` for the
        /// default thresholds).
        source_pressure: super::SourcePressure;
        /// The work directory; the resume token is `<dump_path>.resume.json`
        /// (default: a directory under the temp dir named after the migration).
        dump_path: impl Into<PathBuf>;
        /// Names the slot, publication and work files (default: derived
        /// from the endpoints and filters).
        migration_id: impl Into<String>;
    }

    /// Replace the source endpoint.
    pub fn source(mut self, source: impl IntoEndpoint) -> Self {
        self.config.source = self.keep(source.into_endpoint("source"));
        self
    }

    /// Replace the target endpoint.
    pub fn target(mut self, target: impl IntoEndpoint) -> Self {
        self.config.target = self.keep(target.into_endpoint("target"));
        self
    }

    /// Only schemas matching this pattern (pg_dump syntax; repeatable).
    pub fn schema(mut self, pattern: impl Into<String>) -> Self {
        self.config.filters.schemas.push(pattern.into());
        self
    }

    /// Leave out schemas matching this pattern (repeatable).
    pub fn exclude_schema(mut self, pattern: impl Into<String>) -> Self {
        self.config.filters.exclude_schemas.push(pattern.into());
        self
    }

    /// Only tables matching this pattern (repeatable).
    pub fn table(mut self, pattern: impl Into<String>) -> Self {
        self.config.filters.tables.push(pattern.into());
        self
    }

    /// Leave out tables matching this pattern (repeatable).
    pub fn exclude_table(mut self, pattern: impl Into<String>) -> Self {
        self.config.filters.exclude_tables.push(pattern.into());
        self
    }

    /// With `all_databases`: a tablespace directory `old` on the source is
    /// `new` on the target host (repeatable).
    pub fn tablespace_location(mut self, old: impl Into<String>, new: impl Into<String>) -> Self {
        self.config
            .tablespace_locations
            .push((old.into(), new.into()));
        self
    }

    /// With `all_databases`: leave out databases matching this pattern
    /// (pg_dumpall's `--exclude-database`; repeatable).
    pub fn exclude_database(mut self, pattern: impl Into<String>) -> Self {
        self.config.exclude_databases.push(pattern.into());
        self
    }

    /// Create these tables but copy none of their rows (repeatable).
    pub fn exclude_table_data(mut self, pattern: impl Into<String>) -> Self {
        self.config.filters.exclude_table_data.push(pattern.into());
        self
    }

    /// Objects in the source's tablespace `old` go to the target's `new` (repeatable).
    pub fn tablespace_mapping(mut self, old: impl Into<String>, new: impl Into<String>) -> Self {
        self.config
            .tablespace_mapping
            .push((old.into(), new.into()));
        self
    }

    /// The configuration, checked by [`MigrationConfig::validate`]: the
    /// first problem is returned, with the error a run would give.
    pub fn build(self) -> Result<MigrationConfig> {
        if let Some(e) = self.error {
            return Err(e);
        }
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    const SRC: &str = "host=old-db port=5432 user=app dbname=shop";
    const DST: &str = "host=new-db port=5432 user=app dbname=shop";

    /// The message of `build`'s error, which must be a configuration error.
    fn refusal(b: MigrationConfigBuilder) -> String {
        let e = b.build().expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::Configuration, "{e:?}");
        e.to_string()
    }

    #[test]
    fn a_valid_chain_sets_every_field_it_names() {
        let c = MigrationConfig::online(SRC, DST)
            .jobs(8)
            .index_jobs(2usize)
            .split_bytes(0u64)
            .data_only(true)
            .verify(VerifyLevel::Count)
            .copy_format(CopyFormat::Text)
            .cutover(CutoverMode::Auto)
            .cutover_lag_bytes(4096)
            .fence(false)
            .schema("app")
            .exclude_table("app.audit*")
            .exclude_table_data("app.logs")
            .tablespace_mapping("fast", "pg_default")
            .dump_path("/var/tmp/m")
            .migration_id("shop")
            .no_summary(true)
            .build()
            .unwrap();
        assert_eq!(c.mode, MigrationMode::Online);
        assert_eq!((c.jobs, c.index_jobs, c.split_bytes), (8, Some(2), Some(0)));
        assert!(c.data_only && c.no_summary && !c.fence);
        assert_eq!(c.verify, VerifyLevel::Count);
        assert_eq!(c.cutover, CutoverMode::Auto);
        assert_eq!(c.filters.schemas, ["app"]);
        assert_eq!(c.filters.exclude_tables, ["app.audit*"]);
        assert_eq!(c.filters.exclude_table_data, ["app.logs"]);
        assert_eq!(c.tablespace_mapping, [("fast".into(), "pg_default".into())]);
        assert_eq!(
            c.dump_path.as_deref(),
            Some(std::path::Path::new("/var/tmp/m"))
        );
        assert_eq!(c.migration_id.as_deref(), Some("shop"));
        assert_eq!(c.source.unwrap().hosts[0].to_string(), "old-db");
        // The defaults are Default's.
        let d = MigrationConfig::offline(SRC, DST).build().unwrap();
        assert_eq!(d.mode, MigrationMode::Offline);
        assert_eq!(d.jobs, MigrationConfig::default().jobs);
        assert!(d.statistics == Statistics::Carry && d.large_objects && d.fence && !d.no_summary);
    }

    #[test]
    fn an_endpoint_that_does_not_parse_is_refused_at_build_naming_it() {
        let m = refusal(MigrationConfig::builder(SRC, "port=abc password=Sekr1t").jobs(2));
        assert!(m.contains("target"), "{m}");
        assert!(!m.contains("Sekr1t"), "{m}");
        // The first error wins; later setters do not hide it.
        let m = refusal(MigrationConfig::builder("port=x", "port=y").target(DST));
        assert!(m.contains("source"), "{m}");
        // An EndpointConfig made beforehand is taken as it is.
        let ep = EndpointConfig::parse(SRC).unwrap();
        assert!(MigrationConfig::builder(&ep, ep.with_dbname("copy"))
            .build()
            .is_ok());
    }

    #[test]
    fn invalid_combinations_are_refused_with_what_to_change() {
        let b = || MigrationConfig::builder(SRC, DST);
        for (builder, expect) in [
            (b().jobs(0), "--jobs must be at least 1"),
            (
                MigrationConfig::online(SRC, DST).copy_method(CopyMethod::Dump),
                "--copy-method dump is for offline migrations",
            ),
            (
                b().copy_method(CopyMethod::Dump).compress_level(23),
                "zstd levels are 1 (fastest) to 22",
            ),
            (b().resume(true).force_clean(true), "contradict each other"),
            (b().role_passwords(true), "give --roles too"),
            (
                b().no_tablespaces(true).tablespace_mapping("a", "b"),
                "cannot go with --tablespace-mapping",
            ),
            (
                b().tablespace_mapping("a", "b")
                    .tablespace_mapping("a", "c"),
                "names tablespace \"a\" twice",
            ),
            (
                b().tablespace_mapping("a", "b\0c"),
                "a tablespace name cannot hold a NUL byte",
            ),
            (b().table("db.app.t"), "too many dotted names"),
        ] {
            let m = refusal(builder);
            assert!(m.contains(expect), "expected {expect:?} in: {m}");
        }
        // The compression level matters only for an archive.
        assert!(b().compress_level(0).build().is_ok());
    }

    #[test]
    fn validate_gives_a_run_s_errors_for_a_struct_literal() {
        let c = MigrationConfig::default();
        let e = c.validate().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Configuration);
        assert!(e.to_string().contains("no source given"), "{e}");
        let c = MigrationConfig {
            source: Some(EndpointConfig::parse(SRC).unwrap()),
            target: Some(EndpointConfig::parse(DST).unwrap()),
            jobs: 0,
            ..Default::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            MigrationConfig::builder(SRC, DST)
                .jobs(0)
                .build()
                .unwrap_err()
                .to_string()
        );
    }
}
