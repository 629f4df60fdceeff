//! Unit tests of the archive file layer: round trips, and every way an archive
//! can be incomplete or damaged being caught with a message that names the
//! file. No database needed.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::*;
use crate::error::{exit_code, MigrationError};

/// A COPY-text-like row that varies enough not to compress to nothing.
fn row(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDEAD_BEEF;
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 32;
    format!(
        "{i}\tcustomer-{x:016x}\t{}\t2024-01-{:02}\n",
        x % 100_000,
        x % 28 + 1
    )
}

/// What a stream yielded, without keeping the data.
struct Drained {
    raw: u64,
    sha256: String,
    chunks: usize,
    max_chunk: usize,
    error: Option<MigrationError>,
    /// Items after the first error: there must be none.
    after_error: usize,
}

async fn drain(mut stream: DataStream) -> Drained {
    let mut d = Drained {
        raw: 0,
        sha256: String::new(),
        chunks: 0,
        max_chunk: 0,
        error: None,
        after_error: 0,
    };
    let mut hasher = Sha256::new();
    while let Some(item) = stream.next().await {
        if d.error.is_some() {
            d.after_error += 1;
            continue;
        }
        match item {
            Ok(b) => {
                hasher.update(&b);
                d.raw += b.len() as u64;
                d.chunks += 1;
                d.max_chunk = d.max_chunk.max(b.len());
            }
            Err(e) => d.error = Some(e),
        }
    }
    d.sha256 = hex::encode(hasher.finalize());
    d
}

fn data_file(w: &WrittenFile, rows: u64, format: DataFormat) -> DataFile {
    DataFile {
        file: w.entry.clone(),
        chunk: 0,
        chunks: 1,
        pages: None,
        rows,
        format,
        raw_bytes: w.raw_bytes,
    }
}

fn table(ordinal: u32, files: Vec<DataFile>) -> TableEntry {
    TableEntry {
        schema: "public".into(),
        name: format!("t{ordinal}"),
        qualified: format!("public.t{ordinal}"),
        columns: vec!["id".into(), "name".into()],
        rows: files.iter().map(|f| f.rows).sum(),
        files,
        row_filter: None,
    }
}

fn manifest(tables: Vec<TableEntry>) -> Manifest {
    let mut m = Manifest::new(
        "shop",
        170_002,
        "UTF8",
        Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(),
    );
    m.tables = tables;
    m
}

/// Write `rows` generated rows through the async writer, one chunk per row.
/// Returns the file and the SHA-256 of the raw stream.
async fn write_rows(dir: &Path, rel: &str, rows: u64) -> (WrittenFile, String) {
    let mut w = AsyncDataWriter::create(dir, rel, DEFAULT_ZSTD_LEVEL)
        .await
        .unwrap();
    let mut hasher = Sha256::new();
    for i in 0..rows {
        let r = row(i);
        hasher.update(r.as_bytes());
        w.write(Bytes::from(r)).await.unwrap();
    }
    let written = w.finish().await.unwrap();
    (written, hex::encode(hasher.finalize()))
}

/// A one-table archive of `rows` rows; returns it and the raw SHA-256.
async fn one_file_archive(dir: &Path, rows: u64) -> (Archive, String) {
    let (w, raw_sha) = write_rows(dir, &data_file_path(1, 0), rows).await;
    manifest(vec![table(1, vec![data_file(&w, rows, DataFormat::Text)])])
        .write(dir)
        .unwrap();
    (Archive::open(dir).unwrap(), raw_sha)
}

fn the_data_file(a: &Archive) -> DataFile {
    a.manifest().tables[0].files[0].clone()
}

fn archive_message(e: &MigrationError) -> &str {
    match e {
        MigrationError::Archive(m) => m,
        other => panic!("expected an archive error, got {other:?}"),
    }
}

#[tokio::test]
async fn round_trip_of_several_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let empty = AsyncDataWriter::create(dir, data_file_path(1, 0), DEFAULT_ZSTD_LEVEL)
        .await
        .unwrap()
        .finish()
        .await
        .unwrap();
    assert_eq!(empty.raw_bytes, 0);
    assert!(
        empty.entry.size > 0,
        "an empty zstd frame still has a header"
    );

    let mut small = AsyncDataWriter::create(dir, data_file_path(2, 0), 3)
        .await
        .unwrap();
    small.write(Bytes::from_static(b"1\tone\n")).await.unwrap();
    small.write(Bytes::new()).await.unwrap();
    small.write(Bytes::from_static(b"2\ttwo\n")).await.unwrap();
    let small = small.finish().await.unwrap();

    // About 8 MiB in small chunks, with some chunks larger than a batch.
    let big_rel = data_file_path(3, 1);
    let mut big = AsyncDataWriter::create(dir, big_rel.as_str(), DEFAULT_ZSTD_LEVEL)
        .await
        .unwrap();
    let mut hasher = Sha256::new();
    let mut i = 0u64;
    while big.raw_bytes() < 8 << 20 {
        if i.is_multiple_of(50_000) {
            let mut chunk = String::new();
            for _ in 0..5_000 {
                chunk.push_str(&row(i));
                i += 1;
            }
            assert!(chunk.len() > 128 * 1024);
            hasher.update(chunk.as_bytes());
            big.write(Bytes::from(chunk)).await.unwrap();
        } else {
            let r = row(i);
            i += 1;
            hasher.update(r.as_bytes());
            big.write(Bytes::from(r)).await.unwrap();
        }
    }
    let big_raw_sha = hex::encode(hasher.finalize());
    let big = big.finish().await.unwrap();
    assert!(big.raw_bytes >= 8 << 20);
    assert!(big.entry.size < big.raw_bytes);

    let pre = write_small_file_async(dir, PRE_DATA_FILE, "CREATE TABLE t1 (id int);\n")
        .await
        .unwrap();
    let steps = write_small_file(dir, STEPS_FILE, b"[]").unwrap();

    let mut m = manifest(vec![
        table(1, vec![data_file(&empty, 0, DataFormat::Text)]),
        table(2, vec![data_file(&small, 2, DataFormat::Binary)]),
        table(
            3,
            vec![DataFile {
                chunk: 1,
                chunks: 2,
                pages: Some((1000, None)),
                ..data_file(&big, i, DataFormat::Text)
            }],
        ),
    ]);
    m.schema = vec![pre.clone(), steps];
    m.write(dir).unwrap();
    assert!(list_partial_files(dir).unwrap().is_empty());

    let a = Archive::open(dir).unwrap();
    assert_eq!(a.manifest(), &m);
    let summary = a.verify_all(2).await.unwrap();
    assert_eq!(summary.files, 5);
    assert_eq!(summary.bytes, m.total_size());

    assert_eq!(
        a.read_text(a.manifest().schema_file(PRE_DATA_FILE).unwrap())
            .unwrap(),
        "CREATE TABLE t1 (id int);\n"
    );

    let d = drain(a.open_data(&a.manifest().tables[0].files[0]).unwrap()).await;
    assert!(d.error.is_none(), "{:?}", d.error);
    assert_eq!((d.raw, d.chunks), (0, 0));

    let mut s = a.open_data(&a.manifest().tables[1].files[0]).unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = s.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, b"1\tone\n2\ttwo\n");

    let d = drain(a.open_data(&a.manifest().tables[2].files[0]).unwrap()).await;
    assert!(d.error.is_none(), "{:?}", d.error);
    assert_eq!(d.raw, big.raw_bytes);
    assert_eq!(d.sha256, big_raw_sha);
    assert!(
        d.max_chunk <= 256 * 1024,
        "chunks stay small: {}",
        d.max_chunk
    );
    assert!(d.chunks > 30);
}

#[test]
fn blocking_writer_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = DataWriter::create(dir, "data/00001.0000.copy.zst", 1).unwrap();
    assert_eq!(w.relative_path(), "data/00001.0000.copy.zst");
    let text: String = (0..10_000).map(row).collect();
    std::io::copy(&mut text.as_bytes(), &mut w).unwrap();
    w.write_chunk(b"tail\n").unwrap();
    let written = w.finish().unwrap();
    assert_eq!(written.raw_bytes, text.len() as u64 + 5);

    let on_disk = std::fs::read(dir.join("data/00001.0000.copy.zst")).unwrap();
    assert_eq!(written.entry.size, on_disk.len() as u64);
    assert_eq!(written.entry.sha256, hex::encode(Sha256::digest(&on_disk)));
    let mut decoded = Vec::new();
    zstd::stream::read::Decoder::new(&on_disk[..])
        .unwrap()
        .read_to_end(&mut decoded)
        .unwrap();
    assert_eq!(decoded, format!("{text}tail\n").as_bytes());
}

#[tokio::test]
async fn stream_checks_a_file_written_by_the_blocking_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, raw_sha) = one_file_archive(tmp.path(), 20_000).await;
    a.verify_file(&the_data_file(&a).file).unwrap();
    let d = drain(a.open_data(&the_data_file(&a)).unwrap()).await;
    assert!(d.error.is_none());
    assert_eq!(d.sha256, raw_sha);
}

#[test]
fn manifest_round_trip_and_unknown_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let entry = |path: &str| FileEntry {
        path: path.into(),
        size: 12,
        sha256: "ab".repeat(32),
    };
    let mut m = manifest(vec![table(
        7,
        vec![DataFile {
            file: entry(&data_file_path(7, 2)),
            chunk: 2,
            chunks: 3,
            pages: Some((100, Some(200))),
            rows: 5,
            format: DataFormat::Binary,
            raw_bytes: 40,
        }],
    )]);
    m.snapshot_id = Some("00000003-0000001B-1".into());
    m.copy_format = "binary".into();
    m.schema = vec![entry(PRE_DATA_FILE), entry(POST_DATA_FILE)];
    m.large_objects = Some(entry(LARGE_OBJECTS_FILE));
    m.sequences = Some(entry(SEQUENCES_FILE));
    m.write(dir).unwrap();
    assert!(!dir.join(MANIFEST_TMP_FILE).exists());
    assert_eq!(Manifest::read(dir).unwrap(), m);
    assert_eq!(m.files().count(), 5);
    assert_eq!(m.total_size(), 60);

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(json["format"], FORMAT_NAME);
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["tool_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["compression"]["algorithm"], "zstd");
    assert_eq!(json["compression"]["level"], 1);
    assert_eq!(json["tables"][0]["files"][0]["format"], "binary");
    assert_eq!(
        json["tables"][0]["files"][0]["pages"],
        serde_json::json!([100, 200])
    );
    assert_eq!(
        json["tables"][0]["files"][0]["file"]["path"],
        "data/00007.0002.copy.zst"
    );

    // A newer build of the same format version may add fields anywhere.
    let mut json = json;
    json["added_later"] = serde_json::json!({"x": 1});
    json["tables"][0]["files"][0]["added_later"] = serde_json::json!(true);
    json.as_object_mut().unwrap().remove("sequences");
    std::fs::write(dir.join(MANIFEST_FILE), json.to_string()).unwrap();
    let read = Archive::open(dir).unwrap();
    assert_eq!(read.manifest().tables, m.tables);
    assert_eq!(read.manifest().sequences, None);
}

#[test]
fn newer_format_version_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // A version 2 manifest may look like anything beyond its header.
    std::fs::write(
        tmp.path().join(MANIFEST_FILE),
        r#"{"format":"pg_dbmigrator-archive","format_version":2,"tables":"elsewhere"}"#,
    )
    .unwrap();
    let e = Archive::open(tmp.path()).unwrap_err();
    let msg = archive_message(&e);
    assert!(msg.contains("format version 2"), "{msg}");
    assert!(msg.contains("reads format version 1 at most"), "{msg}");
    assert!(msg.contains("newer one"), "{msg}");
    assert_eq!(e.exit_code(), exit_code::CONFIG);
}

#[test]
fn foreign_or_damaged_manifest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(MANIFEST_FILE);

    std::fs::write(&path, r#"{"format":"something-else","format_version":1}"#).unwrap();
    let e = Archive::open(tmp.path()).unwrap_err();
    assert!(
        archive_message(&e).contains("is not a pg_dbmigrator archive manifest"),
        "{e}"
    );

    let mut good = Vec::new();
    let m = manifest(vec![]);
    m.write(tmp.path()).unwrap();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_end(&mut good)
        .unwrap();
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let e = Archive::open(tmp.path()).unwrap_err();
    let msg = archive_message(&e);
    assert!(msg.contains("manifest.json is damaged"), "{msg}");

    std::fs::write(
        &path,
        r#"{"format":"pg_dbmigrator-archive","format_version":1}"#,
    )
    .unwrap();
    let e = Archive::open(tmp.path()).unwrap_err();
    assert!(archive_message(&e).contains("is damaged"), "{e}");

    // A column name no catalog can hold, written by hand into the manifest.
    let mut t = table(1, vec![]);
    t.columns = vec!["id".into(), "na\0me".into()];
    let json = serde_json::to_vec(&manifest(vec![t])).unwrap();
    std::fs::write(&path, json).unwrap();
    let e = Archive::open(tmp.path()).unwrap_err();
    let msg = archive_message(&e);
    assert!(msg.contains("is damaged"), "{msg}");
    assert!(msg.contains("column name holding a NUL"), "{msg}");
}

#[test]
fn missing_manifest_says_the_dump_did_not_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // What an interrupted dump leaves: data, but no manifest.
    write_small_file(dir, PRE_DATA_FILE, b"SELECT 1;").unwrap();
    let e = Archive::open(dir).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{d} is not a complete pg_dbmigrator archive: manifest.json is missing (the dump did \
             not finish: rerun `pg_dbmigrator dump --dump-path {d} --resume` with the same options)",
            d = dir.display()
        )
    );
    assert_eq!(e.exit_code(), exit_code::CONFIG);

    let e = Archive::open(dir.join("nowhere")).unwrap_err();
    assert!(archive_message(&e).contains("does not exist"), "{e}");
}

#[tokio::test]
async fn truncated_file_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = one_file_archive(tmp.path(), 30_000).await;
    let df = the_data_file(&a);
    let path = a.path_of(&df.file).unwrap();

    for cut in [100, df.file.size / 2] {
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(df.file.size - cut).unwrap();
        drop(f);

        let e = a.verify_file(&df.file).unwrap_err();
        let msg = archive_message(&e);
        assert!(msg.contains("data/00001.0000.copy.zst"), "{msg}");
        assert!(msg.contains("is truncated"), "{msg}");
        assert!(
            msg.contains(&format!(
                "the manifest records {} bytes, the file has {}",
                df.file.size,
                df.file.size - cut
            )),
            "{msg}"
        );
        assert!(a.verify_all(4).await.is_err());

        let d = drain(a.open_data(&df).unwrap()).await;
        let e = d.error.expect("the stream must end with an error");
        assert!(archive_message(&e).contains("is truncated"), "{e}");
        assert_eq!(d.after_error, 0);
        assert!(d.raw < df.raw_bytes);
    }
}

#[tokio::test]
async fn flipped_byte_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = one_file_archive(tmp.path(), 30_000).await;
    let df = the_data_file(&a);
    let path = a.path_of(&df.file).unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let at = df.file.size / 2;
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x10]).unwrap();
    drop(f);

    let e = a.verify_file(&df.file).unwrap_err();
    let msg = archive_message(&e);
    assert!(msg.contains("is damaged: SHA-256 mismatch"), "{msg}");
    assert!(msg.contains(&df.file.sha256), "{msg}");
    assert!(msg.contains("data/00001.0000.copy.zst"), "{msg}");

    let d = drain(a.open_data(&df).unwrap()).await;
    let e = d.error.expect("the stream must end with an error");
    assert!(archive_message(&e).contains("SHA-256 mismatch"), "{e}");
    assert_eq!(d.after_error, 0);
}

#[tokio::test]
async fn stream_ends_with_an_error_when_the_digest_differs() {
    // A file that decodes fine but is not the one the manifest describes, as
    // when it was replaced after verify_all: every chunk arrives, then the
    // error, never a clean end.
    let tmp = tempfile::tempdir().unwrap();
    let (a, raw_sha) = one_file_archive(tmp.path(), 30_000).await;
    let mut df = the_data_file(&a);
    df.file.sha256 = "0".repeat(64);
    let d = drain(a.open_data(&df).unwrap()).await;
    assert_eq!(d.raw, df.raw_bytes);
    assert_eq!(d.sha256, raw_sha);
    let e = d.error.expect("the stream must end with an error");
    assert!(archive_message(&e).contains("SHA-256 mismatch"), "{e}");
    assert_eq!(d.after_error, 0);
}

#[tokio::test]
async fn corrupt_zstd_and_wrong_raw_size_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Listed with its true digest, but not zstd at all.
    let garbage = write_small_file(dir, &data_file_path(1, 0), b"this is not zstd data").unwrap();
    let (good, _) = write_rows(dir, &data_file_path(2, 0), 100).await;
    let mut m = manifest(vec![
        table(
            1,
            vec![DataFile {
                file: garbage,
                chunk: 0,
                chunks: 1,
                pages: None,
                rows: 1,
                format: DataFormat::Text,
                raw_bytes: 21,
            }],
        ),
        table(2, vec![data_file(&good, 100, DataFormat::Text)]),
    ]);
    m.tables[1].files[0].raw_bytes += 1;
    m.write(dir).unwrap();
    let a = Archive::open(dir).unwrap();
    a.verify_all(1).await.unwrap();

    let d = drain(a.open_data(&a.manifest().tables[0].files[0]).unwrap()).await;
    let e = d.error.expect("corrupt zstd must be an error");
    let msg = archive_message(&e);
    assert!(msg.contains("corrupt zstd stream"), "{msg}");
    assert!(msg.contains("data/00001.0000.copy.zst"), "{msg}");

    let d = drain(a.open_data(&a.manifest().tables[1].files[0]).unwrap()).await;
    let e = d.error.expect("a wrong raw size must be an error");
    assert!(archive_message(&e).contains("decompresses to"), "{e}");
}

#[tokio::test]
async fn missing_files_and_several_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (one, _) = write_rows(dir, &data_file_path(1, 0), 1000).await;
    let (two, _) = write_rows(dir, &data_file_path(2, 0), 1000).await;
    let (three, _) = write_rows(dir, &data_file_path(3, 0), 1000).await;
    manifest(vec![
        table(1, vec![data_file(&one, 1000, DataFormat::Text)]),
        table(2, vec![data_file(&two, 1000, DataFormat::Text)]),
        table(3, vec![data_file(&three, 1000, DataFormat::Text)]),
    ])
    .write(dir)
    .unwrap();
    let a = Archive::open(dir).unwrap();

    std::fs::remove_file(dir.join(&one.entry.path)).unwrap();
    let e = a.verify_file(&one.entry).unwrap_err();
    assert!(archive_message(&e).contains("is missing"), "{e}");
    let e = a
        .open_data(&a.manifest().tables[0].files[0])
        .err()
        .expect("a missing file is reported on open");
    let msg = archive_message(&e);
    assert!(
        msg.starts_with(&format!(
            "archive file data/00001.0000.copy.zst in {} is missing:",
            dir.display()
        )),
        "{msg}"
    );

    std::fs::write(dir.join(&three.entry.path), b"short").unwrap();
    let e = a.verify_all(3).await.unwrap_err();
    let msg = archive_message(&e);
    assert!(
        msg.starts_with(&format!(
            "2 of the 3 files of the archive in {} failed verification:",
            dir.display()
        )),
        "{msg}"
    );
    let first = msg.find("00001.0000").unwrap();
    let third = msg.find("00003.0000").unwrap();
    assert!(first < third, "listed in manifest order: {msg}");
    assert!(!msg.contains("00002.0000"), "{msg}");
}

#[tokio::test]
async fn partial_leftover_is_never_a_final_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rel = data_file_path(4, 0);

    let mut w = DataWriter::create(dir, &rel, 1).unwrap();
    w.write_chunk(row(1).as_bytes()).unwrap();
    drop(w);
    assert!(!dir.join(&rel).exists());
    assert!(dir.join(format!("{rel}.partial")).exists());

    let mut w = AsyncDataWriter::create(dir, data_file_path(5, 0), 1)
        .await
        .unwrap();
    w.write(Bytes::from(row(2))).await.unwrap();
    drop(w);
    assert!(!dir.join(data_file_path(5, 0)).exists());

    let mut w = AsyncDataWriter::create(dir, data_file_path(6, 0), 1)
        .await
        .unwrap();
    w.write(Bytes::from(row(3))).await.unwrap();
    w.abort().await.unwrap();
    assert!(!dir.join(data_file_path(6, 0)).exists());
    assert!(!dir
        .join(format!("{}.partial", data_file_path(6, 0)))
        .exists());

    // A manifest naming the file: the leftover does not stand in for it.
    let entry = FileEntry {
        path: rel.clone(),
        size: 10,
        sha256: "0".repeat(64),
    };
    let mut m = manifest(vec![]);
    m.schema = vec![entry.clone()];
    m.write(dir).unwrap();
    std::fs::write(dir.join(MANIFEST_TMP_FILE), b"{").unwrap();
    let a = Archive::open(dir).unwrap();
    let e = a.verify_file(&entry).unwrap_err();
    assert!(
        archive_message(&e).contains("is missing, only its unfinished"),
        "{e}"
    );

    // Nor can a manifest list it under its .partial name.
    let listed_partial = FileEntry {
        path: format!("{rel}.partial"),
        ..entry
    };
    assert!(a.verify_file(&listed_partial).is_err());

    let found = list_partial_files(dir).unwrap();
    assert_eq!(
        found,
        vec![
            dir.join("data").join("00004.0000.copy.zst.partial"),
            dir.join("data").join("00005.0000.copy.zst.partial"),
            dir.join(MANIFEST_TMP_FILE),
        ]
    );
    assert_eq!(remove_partial_files(dir).unwrap(), found);
    assert!(list_partial_files(dir).unwrap().is_empty());
    assert!(dir.join(MANIFEST_FILE).exists());
    assert!(list_partial_files(dir.join("nowhere")).unwrap().is_empty());
}

#[tokio::test]
async fn finishing_replaces_an_older_final_file_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rel = data_file_path(1, 0);
    let (first, _) = write_rows(dir, &rel, 10).await;
    let mut w = AsyncDataWriter::create(dir, rel.as_str(), 1).await.unwrap();
    w.write(Bytes::from(row(99))).await.unwrap();
    // Until the new one finishes, the old one is still there, complete.
    assert_eq!(
        std::fs::metadata(dir.join(&rel)).unwrap().len(),
        first.entry.size
    );
    let second = w.finish().await.unwrap();
    let bytes = std::fs::read(dir.join(&rel)).unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), second.entry.sha256);
}

#[test]
fn level_one_compresses_repetitive_text_well_and_checksums_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = DataWriter::create(tmp.path(), "data/00001.0000.copy.zst", 1).unwrap();
    for i in 0..100_000 {
        let line = format!("{}\tactive\tEUR\t2024-06-01 00:00:00+00\n", i % 1000);
        w.write_chunk(line.as_bytes()).unwrap();
    }
    let written = w.finish().unwrap();
    assert!(
        written.entry.size * 20 < written.raw_bytes,
        "{} compressed bytes for {} raw",
        written.entry.size,
        written.raw_bytes
    );
    let head = std::fs::read(tmp.path().join("data/00001.0000.copy.zst")).unwrap();
    assert_eq!(&head[..4], &[0x28, 0xB5, 0x2F, 0xFD], "zstd magic");
    assert_ne!(head[4] & 0x04, 0, "the frame carries a content checksum");
}

#[tokio::test]
async fn unusable_paths_and_levels_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    manifest(vec![]).write(dir).unwrap();
    let archive = Archive::open(dir).unwrap();
    for bad in [
        "../x",
        "/etc/passwd",
        "data//x",
        "data/./x",
        "",
        "a\\b",
        "data/x.partial",
        MANIFEST_FILE,
    ] {
        let e = DataWriter::create(dir, bad, 1).err().expect(bad);
        assert!(matches!(e, MigrationError::Internal(_)), "{bad}: {e}");
        assert!(write_small_file(dir, bad, b"x").is_err(), "{bad}");
        let entry = FileEntry {
            path: bad.to_string(),
            size: 1,
            sha256: "0".repeat(64),
        };
        let e = archive.verify_file(&entry).unwrap_err();
        assert!(
            archive_message(&e).contains("names an unusable file"),
            "{bad}: {e}"
        );
    }
    assert!(!tmp.path().parent().unwrap().join("x").exists());

    let e = DataWriter::create(dir, "data/x", 1000).err().unwrap();
    assert!(matches!(e, MigrationError::Config(_)), "{e}");
    assert_eq!(e.exit_code(), exit_code::CONFIG);
    assert!(AsyncDataWriter::create(dir, "data/x", 1000).await.is_err());

    // Nor does a hand-edited manifest get us to read outside the archive.
    let mut m = manifest(vec![]);
    m.schema = vec![FileEntry {
        path: "../../etc/passwd".into(),
        size: 1,
        sha256: "0".repeat(64),
    }];
    assert!(matches!(m.write(dir), Err(MigrationError::Internal(_))));
    let mut json = serde_json::to_value(manifest(vec![])).unwrap();
    json["schema"] = serde_json::to_value(&m.schema).unwrap();
    std::fs::write(dir.join(MANIFEST_FILE), json.to_string()).unwrap();
    let e = Archive::open(dir).unwrap_err();
    assert!(archive_message(&e).contains("unusable file"), "{e}");
}

#[test]
fn data_file_names_are_plain_and_distinct() {
    assert_eq!(data_file_path(7, 2), "data/00007.0002.copy.zst");
    assert_eq!(data_file_path(123_456, 0), "data/123456.0000.copy.zst");
    assert_ne!(data_file_path(1, 23), data_file_path(12, 3));
    assert!(check_relative_path(&data_file_path(u32::MAX, u32::MAX)).is_ok());
}

#[tokio::test]
async fn dropping_a_stream_early_stops_the_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, _) = one_file_archive(tmp.path(), 50_000).await;
    let mut s = a.open_data(&the_data_file(&a)).unwrap();
    assert!(s.next().await.unwrap().is_ok());
    drop(s);
    // Not polled at all: no thread, nothing to stop.
    drop(a.open_data(&the_data_file(&a)).unwrap());
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_failing_disk_is_reported_by_write_or_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Every write to /dev/full fails with ENOSPC, as on a full disk.
    std::fs::create_dir(dir.join("data")).unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.join("data/00001.0000.copy.zst.partial")).unwrap();
    let mut w = AsyncDataWriter::create(dir, data_file_path(1, 0), 1)
        .await
        .unwrap();
    // Incompressible, so compressed output reaches the disk early.
    let mut x = 0x1234_5678_9abc_def0u64;
    let mut failure = None;
    for _ in 0..64 {
        let chunk: Vec<u8> = (0..64 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        if let Err(e) = w.write(Bytes::from(chunk)).await {
            failure = Some(e);
            break;
        }
    }
    let e = match failure {
        Some(e) => e,
        None => w.finish().await.unwrap_err(),
    };
    assert!(matches!(e, MigrationError::Io { .. }), "{e}");
    assert!(e.to_string().contains("00001.0000.copy.zst.partial"), "{e}");
    assert!(!dir.join(data_file_path(1, 0)).exists());
}

#[tokio::test]
async fn a_rename_failure_is_reported_by_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut w = AsyncDataWriter::create(dir, data_file_path(1, 0), 1)
        .await
        .unwrap();
    w.write(Bytes::from(row(1))).await.unwrap();
    std::fs::remove_dir_all(dir.join("data")).unwrap();
    let e = w.finish().await.unwrap_err();
    assert!(matches!(e, MigrationError::Io { .. }), "{e}");
}
