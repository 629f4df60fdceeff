//! Reading an archive back, trusting nothing that was not checked.
//!
//! [`Archive::open`] reads the manifest; [`Archive::verify_all`] checks every
//! file's size and SHA-256 against it before restore touches the target;
//! [`Archive::open_data`] streams a data file decompressed and checks the
//! digest again as it goes, so a file that changed after the verification is
//! still caught before the loader commits what it read.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{describe, partial_path, resolve, DataFile, FileEntry, Manifest};
use crate::error::{MigrationError, Result};

/// Decompressed data is handed over in chunks of this size.
const CHUNK: usize = 128 * 1024;
/// Chunks decompressed ahead of the consumer.
const CHANNEL_DEPTH: usize = 4;
/// Read size when hashing a whole file.
const HASH_BUFFER: usize = 1024 * 1024;
/// A combined verification error lists at most this many files.
const MAX_LISTED: usize = 20;

/// An archive directory whose manifest was read and checked.
#[derive(Debug, Clone)]
pub struct Archive {
    dir: PathBuf,
    manifest: Manifest,
}

/// What [`Archive::verify_all`] checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifySummary {
    pub files: usize,
    /// Bytes on disk that were hashed.
    pub bytes: u64,
}

/// Passes bytes through from `inner`, hashing all that was read, and
/// remembers whether `inner` itself failed, to tell a disk error from a
/// damaged zstd stream when the decoder reports either.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    failed: bool,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            size: 0,
            failed: false,
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.size += n as u64;
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.failed = true;
                }
                Err(e)
            }
        }
    }
}

/// Compare what was read with the manifest's record of the file.
fn check_digest(dir: &Path, entry: &FileEntry, size: u64, sha256: &str) -> Result<()> {
    if size != entry.size {
        return Err(wrong_size(dir, entry, size));
    }
    if !sha256.eq_ignore_ascii_case(&entry.sha256) {
        return Err(MigrationError::Archive(format!(
            "{} is damaged: SHA-256 mismatch (expected {}, found {sha256}); the archive was \
             changed or truncated after the dump — dump again or copy the file again",
            describe(dir, &entry.path),
            entry.sha256
        )));
    }
    Ok(())
}

fn wrong_size(dir: &Path, entry: &FileEntry, size: u64) -> MigrationError {
    let what = describe(dir, &entry.path);
    MigrationError::Archive(if size < entry.size {
        format!(
            "{what} is truncated: the manifest records {} bytes, the file has {size}; it was cut \
             short after the dump (an interrupted copy, a full disk) — copy the file again or \
             dump again",
            entry.size
        )
    } else {
        format!(
            "{what} has the wrong size: the manifest records {} bytes, the file has {size}; it \
             was changed after the dump — copy the file again or dump again",
            entry.size
        )
    })
}

/// Open a listed file, explaining a missing one.
fn open_listed(dir: &Path, entry: &FileEntry) -> Result<File> {
    let path = resolve(dir, &entry.path)?;
    File::open(&path).map_err(|e| {
        if e.kind() != io::ErrorKind::NotFound {
            return MigrationError::io(format!("opening {}", path.display()), e);
        }
        let what = describe(dir, &entry.path);
        MigrationError::Archive(if partial_path(&path).exists() {
            format!(
                "{what} is missing, only its unfinished {}{} is there: the archive is not the \
                 one the manifest describes — copy the whole archive again or dump again",
                entry.path,
                super::PARTIAL_SUFFIX
            )
        } else {
            format!(
                "{what} is missing: the archive is incomplete (only partly copied, or files \
                 were removed after the dump) — copy the whole archive again or dump again"
            )
        })
    })
}

/// Hash a listed file in full and compare it with the manifest.
fn verify_entry(dir: &Path, entry: &FileEntry, cancel: &AtomicBool) -> Result<u64> {
    let mut file = open_listed(dir, entry)?;
    let ctx = || format!("reading {}", describe(dir, &entry.path));
    // The size alone settles a truncated file without reading it.
    let on_disk = file
        .metadata()
        .map_err(|e| MigrationError::io(ctx(), e))?
        .len();
    if on_disk != entry.size {
        return Err(wrong_size(dir, entry, on_disk));
    }
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; HASH_BUFFER];
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(MigrationError::Cancelled);
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(MigrationError::io(ctx(), e)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    check_digest(dir, entry, size, &hex::encode(hasher.finalize()))?;
    Ok(size)
}

/// Sets the flag when dropped: stops the hashing threads of a `verify_all`
/// whose future was dropped (Ctrl-C), instead of letting them read on.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Archive {
    /// Open the archive at `dir`: read `manifest.json` and check it (format,
    /// version, paths). Files are not read; see [`Archive::verify_all`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Archive> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = Manifest::read(&dir)?;
        Ok(Archive { dir, manifest })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Where a listed file is on disk.
    pub fn path_of(&self, entry: &FileEntry) -> Result<PathBuf> {
        resolve(&self.dir, &entry.path)
    }

    /// Check one file's size and SHA-256 against `entry`. Reads the whole
    /// file: blocking, call it from a blocking thread in async code.
    pub fn verify_file(&self, entry: &FileEntry) -> Result<()> {
        verify_entry(&self.dir, entry, &AtomicBool::new(false)).map(|_| ())
    }

    /// Check every file the manifest lists, `parallelism` files at a time on
    /// blocking threads. Only the compressed bytes are read, so this costs one
    /// read of the archive and no decompression.
    ///
    /// One bad file gives its own error; several give one
    /// [`MigrationError::Archive`] listing them in manifest order.
    pub async fn verify_all(&self, parallelism: usize) -> Result<VerifySummary> {
        let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
        let entries: Vec<FileEntry> = self.manifest.files().cloned().collect();
        let files = entries.len();
        let mut results: Vec<(usize, Result<u64>)> =
            futures::stream::iter(entries.into_iter().enumerate())
                .map(|(i, entry)| {
                    let dir = self.dir.clone();
                    let flag = cancel.0.clone();
                    async move {
                        let joined =
                            tokio::task::spawn_blocking(move || verify_entry(&dir, &entry, &flag))
                                .await;
                        let result = joined.unwrap_or_else(|e| {
                            Err(MigrationError::Internal(format!(
                                "an archive verification thread failed: {e}"
                            )))
                        });
                        (i, result)
                    }
                })
                .buffer_unordered(parallelism.max(1))
                .collect()
                .await;
        results.sort_by_key(|(i, _)| *i);
        let mut bytes = 0;
        let mut errors = Vec::new();
        for (_, r) in results {
            match r {
                Ok(n) => bytes += n,
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(VerifySummary { files, bytes }),
            1 => Err(errors.pop().expect("one error")),
            n => {
                let mut msg = format!(
                    "{n} of the {files} files of the archive in {} failed verification:",
                    self.dir.display()
                );
                for e in errors.iter().take(MAX_LISTED) {
                    msg.push_str("\n  - ");
                    msg.push_str(&e.to_string());
                }
                if n > MAX_LISTED {
                    msg.push_str(&format!("\n  - and {} more", n - MAX_LISTED));
                }
                Err(MigrationError::Archive(msg))
            }
        }
    }

    /// Read a small listed file (schema SQL, JSON) whole, checked against the
    /// manifest. Blocking.
    pub fn read_small_file(&self, entry: &FileEntry) -> Result<Vec<u8>> {
        let mut file = open_listed(&self.dir, entry)?;
        let ctx = || format!("reading {}", describe(&self.dir, &entry.path));
        let on_disk = file
            .metadata()
            .map_err(|e| MigrationError::io(ctx(), e))?
            .len();
        if on_disk != entry.size {
            return Err(wrong_size(&self.dir, entry, on_disk));
        }
        let mut data = Vec::with_capacity(on_disk as usize);
        file.read_to_end(&mut data)
            .map_err(|e| MigrationError::io(ctx(), e))?;
        check_digest(
            &self.dir,
            entry,
            data.len() as u64,
            &hex::encode(Sha256::digest(&data)),
        )?;
        Ok(data)
    }

    /// [`Archive::read_small_file`] as UTF-8 text.
    pub fn read_text(&self, entry: &FileEntry) -> Result<String> {
        String::from_utf8(self.read_small_file(entry)?).map_err(|e| {
            MigrationError::Archive(format!(
                "{} is not UTF-8 text ({e}) although it matches the manifest: the dump wrote a \
                 bad file — dump again",
                describe(&self.dir, &entry.path)
            ))
        })
    }

    /// Stream a data file's COPY data, decompressed, in chunks of about
    /// 128 KiB.
    ///
    /// The file is opened now (a missing file is reported here); reading and
    /// decompressing happen on a blocking thread started at the first poll,
    /// a few chunks ahead of the consumer. The size, SHA-256 and uncompressed
    /// length are checked while reading: on a mismatch, or a damaged zstd
    /// stream, the last item is an error instead of the stream's normal end,
    /// so a loader that commits only after the end never commits bad data.
    pub fn open_data(&self, file: &DataFile) -> Result<DataStream> {
        let f = open_listed(&self.dir, &file.file)?;
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        Ok(DataStream {
            start: Some(Producer {
                dir: self.dir.clone(),
                entry: file.clone(),
                file: f,
                tx,
            }),
            rx,
        })
    }
}

/// The decompressed contents of one data file; see [`Archive::open_data`].
///
/// Poll it inside a Tokio runtime (its reading thread is a blocking task).
/// Dropping it stops that thread.
pub struct DataStream {
    start: Option<Producer>,
    rx: mpsc::Receiver<Result<Bytes>>,
}

impl Stream for DataStream {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(producer) = this.start.take() {
            // Started here rather than in open_data so that opening needs no
            // runtime and an unread stream costs no thread.
            tokio::task::spawn_blocking(move || producer.run());
        }
        this.rx.poll_recv(cx)
    }
}

/// The blocking side of a [`DataStream`].
struct Producer {
    dir: PathBuf,
    entry: DataFile,
    file: File,
    tx: mpsc::Sender<Result<Bytes>>,
}

impl Producer {
    fn run(self) {
        let Producer {
            dir,
            entry,
            file,
            tx,
        } = self;
        // Sending fails only when the consumer dropped the stream: stop then.
        if let Err(e) = decode(&dir, &entry, file, &tx) {
            let _ = tx.blocking_send(Err(e));
        }
    }
}

/// Read and decompress the whole file into `tx`; `Ok` only when everything
/// matched the manifest (or the consumer went away).
fn decode(
    dir: &Path,
    entry: &DataFile,
    file: File,
    tx: &mpsc::Sender<Result<Bytes>>,
) -> Result<()> {
    let what = || describe(dir, &entry.file.path);
    let mut decoder = zstd::stream::read::Decoder::new(HashingReader::new(file))
        .map_err(|e| MigrationError::io(format!("setting up zstd for {}", what()), e))?;
    let mut raw = 0u64;
    let failure = loop {
        let mut buf = BytesMut::zeroed(CHUNK);
        match read_full(&mut decoder, &mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                buf.truncate(n);
                raw += n as u64;
                if tx.blocking_send(Ok(buf.freeze())).is_err() {
                    return Ok(());
                }
            }
            Err(e) => break Some(e),
        }
    };
    // Read whatever the decoder left, so the digest covers the whole file
    // even when decoding stopped early.
    let mut rest = decoder.finish();
    let drained = io::copy(&mut rest, &mut io::sink());
    let hashing = rest.into_inner();
    if hashing.failed {
        let e = match (failure, drained) {
            (Some(e), _) | (None, Err(e)) => e,
            (None, Ok(_)) => io::Error::other("read error"),
        };
        return Err(MigrationError::io(format!("reading {}", what()), e));
    }
    if let Err(e) = drained {
        return Err(MigrationError::io(format!("reading {}", what()), e));
    }
    let sha256 = hex::encode(hashing.hasher.finalize());
    // A file that is not the dumped one explains a zstd error best.
    check_digest(dir, &entry.file, hashing.size, &sha256)?;
    if let Some(e) = failure {
        return Err(MigrationError::Archive(format!(
            "{} is damaged: corrupt zstd stream ({e}) although its size and SHA-256 match the \
             manifest; the dump wrote a bad file — dump again",
            what()
        )));
    }
    if raw != entry.raw_bytes {
        return Err(MigrationError::Archive(format!(
            "{} decompresses to {raw} bytes, the manifest records {}; the dump wrote a bad file \
             or manifest — dump again",
            what(),
            entry.raw_bytes
        )));
    }
    Ok(())
}

/// Fill `buf` as far as the reader allows; 0 only at the end.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
