//! Writing archive files so that a final name always means a complete file.
//!
//! [`DataWriter`] compresses a COPY stream with zstd into `NAME.partial`,
//! hashing the compressed bytes on their way to disk (no second read), and
//! renames the file only after an fsync. [`AsyncDataWriter`] feeds one from
//! async code: the compression runs on a blocking thread behind a small
//! bounded channel, so it overlaps with the network reads and memory stays
//! flat whatever the file size. [`write_small_file`] does the same for small
//! uncompressed files (schema SQL, JSON).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{check_relative_path, ensure_parent, partial_path, sync_dir, FileEntry};
use crate::error::{MigrationError, Result};

/// The async writer sends the blocking thread batches of about this size:
/// COPY yields one small chunk per row, and one channel message per row would
/// cost more than compressing it.
const BATCH: usize = 128 * 1024;
/// Batches in flight between the async side and the compressing thread: with
/// [`BATCH`], about 1 MiB, enough to ride out short stalls of either side.
const CHANNEL_DEPTH: usize = 8;
/// Compressed output is written to disk in pieces of this size.
const WRITE_BUFFER: usize = 256 * 1024;

/// A finished file: its manifest entry and how many bytes went in before
/// compression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    pub entry: FileEntry,
    pub raw_bytes: u64,
}

/// Passes bytes through to `inner`, hashing exactly what `inner` accepted.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Encoder = zstd::stream::write::Encoder<'static, HashingWriter<BufWriter<File>>>;

/// A zstd-compressed archive file being written (blocking I/O).
///
/// Dropped without [`finish`](DataWriter::finish), it leaves only its
/// `.partial` file behind, which a resumed dump removes.
pub struct DataWriter {
    dir: PathBuf,
    rel: String,
    path: PathBuf,
    partial: PathBuf,
    encoder: Encoder,
    raw_bytes: u64,
}

impl DataWriter {
    /// Start writing `relative_path` (e.g. from [`super::data_file_path`])
    /// under `archive_dir`, compressed at zstd `level`
    /// ([`super::DEFAULT_ZSTD_LEVEL`] unless the user asked otherwise).
    ///
    /// Missing directories are created. A file already under the final name
    /// is replaced only when this one finishes. Two writers must not write
    /// the same path at once: they would share the `.partial` file.
    pub fn create(archive_dir: impl AsRef<Path>, relative_path: &str, level: i32) -> Result<Self> {
        let dir = archive_dir.as_ref().to_path_buf();
        let range = zstd::compression_level_range();
        if !range.contains(&level) {
            return Err(MigrationError::Config(format!(
                "zstd compression level {level} is out of range: use {} to {} (1 is fast, higher \
                 levels compress better but slower, negative ones are faster still)",
                range.start(),
                range.end()
            )));
        }
        let path = target_path(&dir, relative_path)?;
        ensure_parent(&dir, &path)?;
        let partial = partial_path(&path);
        let file = File::create(&partial)
            .map_err(|e| MigrationError::io(format!("creating {}", partial.display()), e))?;
        let sink = HashingWriter {
            inner: BufWriter::with_capacity(WRITE_BUFFER, file),
            hasher: Sha256::new(),
            size: 0,
        };
        let zstd_err =
            |e| MigrationError::io(format!("setting up zstd for {}", partial.display()), e);
        let mut encoder = Encoder::new(sink, level).map_err(zstd_err)?;
        // The frame checksum lets a decoder catch damage on its own, even in
        // a file copied out of the archive without its manifest.
        encoder.include_checksum(true).map_err(zstd_err)?;
        // Parallelism comes from writing several files at once; zstd's own
        // worker threads would only compete with the other writers.
        encoder
            .set_parameter(zstd::zstd_safe::CParameter::NbWorkers(0))
            .map_err(zstd_err)?;
        Ok(DataWriter {
            dir,
            rel: relative_path.to_string(),
            path,
            partial,
            encoder,
            raw_bytes: 0,
        })
    }

    /// The file's path relative to the archive root.
    pub fn relative_path(&self) -> &str {
        &self.rel
    }

    /// Uncompressed bytes written so far.
    pub fn raw_bytes(&self) -> u64 {
        self.raw_bytes
    }

    /// Compress and write `data`.
    pub fn write_chunk(&mut self, data: &[u8]) -> Result<()> {
        self.encoder
            .write_all(data)
            .map_err(|e| MigrationError::io(format!("writing {}", self.partial.display()), e))?;
        self.raw_bytes += data.len() as u64;
        Ok(())
    }

    /// End the zstd stream, fsync, give the file its final name and fsync the
    /// directory: from then on the file exists complete or not at all.
    pub fn finish(self) -> Result<WrittenFile> {
        let DataWriter {
            dir,
            rel,
            path,
            partial,
            encoder,
            raw_bytes,
        } = self;
        let ctx = || format!("writing {}", partial.display());
        let sink = encoder.finish().map_err(|e| MigrationError::io(ctx(), e))?;
        let HashingWriter {
            inner,
            hasher,
            size,
        } = sink;
        let file = inner
            .into_inner()
            .map_err(|e| MigrationError::io(ctx(), e.into_error()))?;
        file.sync_all().map_err(|e| MigrationError::io(ctx(), e))?;
        drop(file);
        commit(&dir, &partial, &path)?;
        Ok(WrittenFile {
            entry: FileEntry {
                path: rel,
                size,
                sha256: hex::encode(hasher.finalize()),
            },
            raw_bytes,
        })
    }

    /// Give up on the file and remove its `.partial`.
    pub fn abort(self) -> Result<()> {
        let partial = self.partial.clone();
        drop(self);
        remove_if_present(&partial)
    }
}

impl Write for DataWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.encoder.write(buf)?;
        self.raw_bytes += n as u64;
        Ok(n)
    }

    /// Flushing ends the current zstd block early, which costs compression;
    /// [`DataWriter::finish`] is what makes the file complete.
    fn flush(&mut self) -> io::Result<()> {
        self.encoder.flush()
    }
}

/// Where to write `rel`. Names come from the dump code, not from users, so a
/// bad one is a bug: refusing it keeps the archive readable by restore.
fn target_path(dir: &Path, rel: &str) -> Result<PathBuf> {
    check_relative_path(rel).map_err(|why| {
        MigrationError::Internal(format!("refusing to write archive file {rel:?}: {why}"))
    })?;
    Ok(rel
        .split('/')
        .fold(dir.to_path_buf(), |p, part| p.join(part)))
}

/// Rename the finished `partial` to `path` and make the rename durable.
fn commit(dir: &Path, partial: &Path, path: &Path) -> Result<()> {
    std::fs::rename(partial, path).map_err(|e| {
        MigrationError::io(
            format!("renaming {} to {}", partial.display(), path.display()),
            e,
        )
    })?;
    let parent = path.parent().unwrap_or(dir);
    sync_dir(parent).map_err(|e| MigrationError::io(format!("syncing {}", parent.display()), e))
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(MigrationError::io(
            format!("removing {}", path.display()),
            e,
        )),
    }
}

/// Write a small uncompressed file (schema SQL, JSON) atomically: through
/// `.partial`, fsync, rename, fsync of the directory. Blocks; from async code
/// use [`write_small_file_async`].
pub fn write_small_file(
    archive_dir: impl AsRef<Path>,
    relative_path: &str,
    data: &[u8],
) -> Result<FileEntry> {
    let dir = archive_dir.as_ref();
    let path = target_path(dir, relative_path)?;
    ensure_parent(dir, &path)?;
    let partial = partial_path(&path);
    let ctx = || format!("writing {}", partial.display());
    let mut f = File::create(&partial).map_err(|e| MigrationError::io(ctx(), e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| MigrationError::io(ctx(), e))?;
    drop(f);
    commit(dir, &partial, &path)?;
    Ok(FileEntry {
        path: relative_path.to_string(),
        size: data.len() as u64,
        sha256: hex::encode(Sha256::digest(data)),
    })
}

/// [`write_small_file`] on a blocking thread.
pub async fn write_small_file_async(
    archive_dir: impl Into<PathBuf>,
    relative_path: impl Into<String>,
    data: impl Into<Bytes>,
) -> Result<FileEntry> {
    let (dir, rel, data) = (archive_dir.into(), relative_path.into(), data.into());
    tokio::task::spawn_blocking(move || write_small_file(&dir, &rel, &data))
        .await
        .map_err(|e| MigrationError::Internal(format!("archive writer thread failed: {e}")))?
}

enum Msg {
    Data(Bytes),
    Finish,
}

/// A [`DataWriter`] fed from async code, e.g. with the `Bytes` chunks of a
/// `COPY ... TO STDOUT` stream.
///
/// Compression and disk writes happen on a blocking thread fed through a
/// bounded channel: while it compresses one batch the caller can already read
/// the next from the network, and at most about 1 MiB of input waits in
/// between, whatever the file size (plus a chunk larger than that, if the
/// caller hands one over).
///
/// Dropped without [`finish`](AsyncDataWriter::finish) (a cancelled dump), it
/// leaves only its `.partial` file. Cancelling a `write` future leaves the
/// file unfinishable; drop the writer then.
pub struct AsyncDataWriter {
    rel: String,
    partial: PathBuf,
    tx: Option<mpsc::Sender<Msg>>,
    task: Option<JoinHandle<Result<Option<WrittenFile>>>>,
    pending: BytesMut,
    raw_bytes: u64,
}

impl AsyncDataWriter {
    /// Like [`DataWriter::create`]; the file is created before this returns,
    /// so a directory that cannot be written is reported here.
    pub async fn create(
        archive_dir: impl Into<PathBuf>,
        relative_path: impl Into<String>,
        level: i32,
    ) -> Result<Self> {
        let (dir, rel) = (archive_dir.into(), relative_path.into());
        let rel2 = rel.clone();
        let writer = tokio::task::spawn_blocking(move || DataWriter::create(&dir, &rel2, level))
            .await
            .map_err(|e| {
                MigrationError::Internal(format!("archive writer thread failed: {e}"))
            })??;
        let partial = writer.partial.clone();
        let (tx, mut rx) = mpsc::channel::<Msg>(CHANNEL_DEPTH);
        let task = tokio::task::spawn_blocking(move || {
            let mut writer = writer;
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    Msg::Data(b) => writer.write_chunk(&b)?,
                    Msg::Finish => return writer.finish().map(Some),
                }
            }
            // The async side went away without finishing: leave the .partial.
            Ok(None)
        });
        Ok(AsyncDataWriter {
            rel,
            partial,
            tx: Some(tx),
            task: Some(task),
            pending: BytesMut::new(),
            raw_bytes: 0,
        })
    }

    /// The file's path relative to the archive root.
    pub fn relative_path(&self) -> &str {
        &self.rel
    }

    /// Uncompressed bytes handed over so far.
    pub fn raw_bytes(&self) -> u64 {
        self.raw_bytes
    }

    /// Queue `chunk` for compression. Waits only when the compressing thread
    /// is behind by more than the channel holds. An error of that thread
    /// (disk full, say) is returned by the next `write` or `finish`.
    pub async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.raw_bytes += chunk.len() as u64;
        if chunk.len() >= BATCH {
            // Big enough on its own: pass it on without copying.
            self.flush_pending().await?;
            return self.send(Msg::Data(chunk)).await;
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve(BATCH);
        }
        self.pending.extend_from_slice(&chunk);
        if self.pending.len() >= BATCH {
            self.flush_pending().await?;
        }
        Ok(())
    }

    async fn flush_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = self.pending.split().freeze();
        self.send(Msg::Data(batch)).await
    }

    async fn send(&mut self, msg: Msg) -> Result<()> {
        let Some(tx) = &self.tx else {
            return Err(self.gone());
        };
        if tx.send(msg).await.is_ok() {
            return Ok(());
        }
        // The thread stopped: it failed, and its error says why.
        self.tx = None;
        Err(match self.join().await {
            Err(e) => e,
            Ok(_) => self.gone(),
        })
    }

    fn gone(&self) -> MigrationError {
        MigrationError::Internal(format!(
            "the writer of {} stopped before the file was finished",
            self.partial.display()
        ))
    }

    async fn join(&mut self) -> Result<Option<WrittenFile>> {
        match self.task.take() {
            Some(task) => task.await.map_err(|e| {
                MigrationError::Internal(format!(
                    "the writer thread of {} failed: {e}",
                    self.partial.display()
                ))
            })?,
            None => Err(self.gone()),
        }
    }

    /// Write what is queued, end the zstd stream and commit the file as
    /// [`DataWriter::finish`] does.
    pub async fn finish(mut self) -> Result<WrittenFile> {
        self.flush_pending().await?;
        self.send(Msg::Finish).await?;
        self.tx = None;
        match self.join().await? {
            Some(written) => Ok(written),
            None => Err(self.gone()),
        }
    }

    /// Give up on the file: stop the thread and remove the `.partial`.
    pub async fn abort(mut self) -> Result<()> {
        self.tx = None;
        // Its error, if any, is moot: the file is being thrown away.
        let _ = self.join().await;
        remove_if_present(&self.partial)
    }
}
