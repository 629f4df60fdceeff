//! The token's journal: per-item markers (tables copied, archive files
//! written) appended one line each, so recording the 10,000th table costs
//! what recording the first did, instead of a rewrite of the whole token.
//!
//! It lives beside the token (`<token>.journal`). Each line is a JSON
//! record, a tab and a checksum of the JSON. The first record names the
//! token it belongs to (migration id and creation time): a journal left by
//! another token is stale and ignored. Every full save of the token folds
//! the journal's records into the token and starts the journal afresh, so
//! replaying a record twice is harmless.
//!
//! A crash in the middle of an append leaves a torn last line: it is
//! discarded (its item had not counted as done, since an item counts only
//! once its record is durable). Damage anywhere before the last line is
//! refused: silently cutting the journal short would forget finished work
//! and redo it on top of itself.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{CopyMarker, DataFile, ResumeToken};
use crate::error::{MigrationError, Result};

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Record {
    /// Which token the records that follow belong to.
    Header {
        migration_id: String,
        token_created_at: DateTime<Utc>,
    },
    Copied {
        item: String,
        marker: CopyMarker,
    },
    Dumped {
        item: String,
        file: DataFile,
    },
}

impl Record {
    fn header_of(token: &ResumeToken) -> Record {
        Record::Header {
            migration_id: token.migration_id.clone(),
            token_created_at: token.created_at,
        }
    }

    /// Put what the record says into the token.
    pub(crate) fn apply(self, token: &mut ResumeToken) {
        match self {
            Record::Header { .. } => {}
            Record::Copied { item, marker } => {
                token.copied.insert(item, marker);
            }
            Record::Dumped { item, file } => {
                token.dumped.insert(item, file);
            }
        }
    }
}

/// The journal's path for the token at `token_path`.
pub(crate) fn path_for(token_path: &Path) -> PathBuf {
    let mut s = token_path.as_os_str().to_owned();
    s.push(".journal");
    PathBuf::from(s)
}

fn checksum(json: &[u8]) -> String {
    hex::encode(&Sha256::digest(json)[..8])
}

fn encode(r: &Record) -> Vec<u8> {
    let json = serde_json::to_vec(r).expect("journal records serialize");
    let mut line = json.clone();
    line.push(b'\t');
    line.extend_from_slice(checksum(&json).as_bytes());
    line.push(b'\n');
    line
}

fn decode(line: &[u8]) -> std::result::Result<Record, String> {
    let tab = line
        .iter()
        .rposition(|&b| b == b'\t')
        .ok_or("no checksum")?;
    let (json, sum) = (&line[..tab], &line[tab + 1..]);
    if sum != checksum(json).as_bytes() {
        return Err("checksum mismatch".into());
    }
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

/// What reading a journal found.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    pub records: Vec<Record>,
    /// Bytes up to the end of the last good record: where appends go on.
    pub valid_len: u64,
    /// A torn last record was found (and is not counted).
    pub torn_tail: bool,
    /// The journal belongs to another token (ignored as a whole).
    pub stale: bool,
}

/// Read the journal of `token`. A missing journal is empty.
pub(crate) fn read(journal: &Path, token: &ResumeToken) -> Result<Replay> {
    let bytes = match std::fs::read(journal) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Replay::default()),
        Err(e) => {
            return Err(MigrationError::io(
                format!("reading resume journal {}", journal.display()),
                e,
            ))
        }
    };
    parse(&bytes, journal, token)
}

fn parse(bytes: &[u8], journal: &Path, token: &ResumeToken) -> Result<Replay> {
    let mut out = Replay::default();
    let mut offset = 0usize;
    let mut line_no = 0usize;
    while offset < bytes.len() {
        line_no += 1;
        let (line, next, complete) = match bytes[offset..].iter().position(|&b| b == b'\n') {
            Some(n) => (&bytes[offset..offset + n], offset + n + 1, true),
            None => (&bytes[offset..], bytes.len(), false),
        };
        let last = next >= bytes.len();
        let decoded = if complete {
            decode(line)
        } else {
            Err("cut short".to_string())
        };
        match decoded {
            Ok(r) => {
                if line_no == 1 && r != Record::header_of(token) {
                    if matches!(r, Record::Header { .. }) {
                        out.stale = true;
                        out.records.clear();
                        return Ok(out);
                    }
                    return Err(damaged(
                        journal,
                        line_no,
                        "it does not start with its header",
                    ));
                }
                if line_no > 1 {
                    out.records.push(r);
                }
                out.valid_len = next as u64;
            }
            // A crash mid-append tears only the last record.
            Err(_) if last => {
                out.torn_tail = true;
                break;
            }
            Err(why) => return Err(damaged(journal, line_no, &why)),
        }
        offset = next;
    }
    Ok(out)
}

fn damaged(journal: &Path, line: usize, why: &str) -> MigrationError {
    MigrationError::resume_refused(format!(
        "the resume journal {} is damaged at line {line} ({why}), before its last record, \
         so it is not a crash's torn write. It records which tables are done and is never \
         cut short silently: put back an intact copy, or start over",
        journal.display()
    ))
    .with_remedy(crate::error::Remedy::ForceClean)
}

/// Start the journal afresh for `token`, whose full save now holds every
/// record: truncate, write the header, fsync.
pub(crate) fn reset(journal: &Path, token: &ResumeToken) -> Result<()> {
    let ctx = |e| MigrationError::io(format!("writing resume journal {}", journal.display()), e);
    let mut f = File::create(journal).map_err(ctx)?;
    f.write_all(&encode(&Record::header_of(token)))
        .and_then(|_| f.sync_all())
        .map_err(ctx)
}

/// The journal open for appending.
pub(crate) struct Appender {
    file: File,
    path: PathBuf,
}

impl Appender {
    /// Open the journal of `token` for appending: a torn tail is cut off
    /// first (or the next record would be glued to it), a stale or missing
    /// journal is started afresh.
    pub(crate) fn open(journal: &Path, token: &ResumeToken) -> Result<Appender> {
        let replay = read(journal, token)?;
        if replay.stale || replay.valid_len == 0 {
            reset(journal, token)?;
        } else if replay.torn_tail {
            let f = OpenOptions::new()
                .write(true)
                .open(journal)
                .map_err(|e| MigrationError::io(format!("opening {}", journal.display()), e))?;
            f.set_len(replay.valid_len)
                .and_then(|_| f.sync_all())
                .map_err(|e| MigrationError::io(format!("truncating {}", journal.display()), e))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(journal)
            .map_err(|e| MigrationError::io(format!("opening {}", journal.display()), e))?;
        Ok(Appender {
            file,
            path: journal.to_path_buf(),
        })
    }

    /// Append records and make them durable (one fsync) before returning.
    pub(crate) fn append(&mut self, records: &[Record]) -> Result<()> {
        let bytes: Vec<u8> = records.iter().flat_map(encode).collect();
        self.file
            .write_all(&bytes)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| {
                MigrationError::io(
                    format!("appending to resume journal {}", self.path.display()),
                    e,
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MigrationMode;
    use crate::resume::{Definition, EndpointIdentity};

    fn token() -> ResumeToken {
        let ep = EndpointIdentity {
            hosts: vec!["h".into()],
            ports: vec![5432],
            dbname: "d".into(),
        };
        let def = Definition {
            mode: MigrationMode::Offline,
            data_only: false,
            source: ep.clone(),
            target: ep,
            filters: Default::default(),
            large_objects: true,
            slot_name: None,
            publication_name: None,
        };
        ResumeToken::new("m1".into(), def, "/tmp/x".into())
    }

    fn copied(item: &str, rows: u64) -> Record {
        Record::Copied {
            item: item.into(),
            marker: CopyMarker {
                rows,
                bytes: rows * 10,
                seconds: 0.5,
                done_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            },
        }
    }

    fn journal_with(t: &ResumeToken, records: &[Record]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.resume.json.journal");
        reset(&path, t).unwrap();
        let mut a = Appender::open(&path, t).unwrap();
        for r in records {
            a.append(std::slice::from_ref(r)).unwrap();
        }
        (dir, path)
    }

    #[test]
    fn records_replay_in_order() {
        let t = token();
        let recs = [copied("a", 1), copied("b", 2)];
        let (_d, path) = journal_with(&t, &recs);
        let r = read(&path, &t).unwrap();
        assert_eq!(r.records, recs);
        assert!(!r.torn_tail && !r.stale);
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_cut_off_before_the_next_append() {
        let t = token();
        let (_d, path) = journal_with(&t, &[copied("a", 1), copied("b", 2)]);
        let full = std::fs::read(&path).unwrap();
        // Every possible tear inside the last record.
        let last_start = full[..full.len() - 1]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        for cut in last_start + 1..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let r = read(&path, &t).unwrap();
            assert_eq!(r.records, [copied("a", 1)], "cut at {cut}");
            assert!(r.torn_tail, "cut at {cut}");
            assert_eq!(r.valid_len as usize, last_start);
        }
        // Appending after a tear leaves a journal that reads back whole.
        let mut a = Appender::open(&path, &t).unwrap();
        a.append(&[copied("c", 3)]).unwrap();
        let r = read(&path, &t).unwrap();
        assert_eq!(r.records, [copied("a", 1), copied("c", 3)]);
        assert!(!r.torn_tail);
    }

    #[test]
    fn damage_before_the_last_record_is_refused() {
        let t = token();
        let (_d, path) = journal_with(&t, &[copied("a", 1), copied("b", 2), copied("c", 3)]);
        let mut bytes = std::fs::read(&path).unwrap();
        // Flip a digit inside the second record ("b" has rows 2).
        let text = String::from_utf8(bytes.clone()).unwrap();
        let at = text.find("\"rows\":2").unwrap() + 7;
        bytes[at] = b'7';
        std::fs::write(&path, &bytes).unwrap();
        let e = read(&path, &t).unwrap_err().to_string();
        assert!(e.contains("damaged at line 3"), "{e}");
        assert!(e.contains("`force_clean`"), "{e}");
        // Neither is an append allowed to paper over it.
        assert!(Appender::open(&path, &t).is_err());
        // A lost newline joins two records: damage too, not a tear.
        let (_d2, path2) = journal_with(&t, &[copied("a", 1), copied("b", 2), copied("c", 3)]);
        let text = std::fs::read_to_string(&path2).unwrap();
        let second_nl = text.match_indices('\n').nth(1).unwrap().0;
        let mut joined = text.into_bytes();
        joined.remove(second_nl);
        std::fs::write(&path2, &joined).unwrap();
        assert!(read(&path2, &t).is_err());
    }

    #[test]
    fn a_journal_of_another_token_is_stale() {
        let t = token();
        let (_d, path) = journal_with(&t, &[copied("a", 1)]);
        let mut other = token();
        other.created_at = t.created_at + chrono::Duration::seconds(1);
        let r = read(&path, &other).unwrap();
        assert!(r.stale && r.records.is_empty());
        // Opened for the new token, it starts afresh.
        let mut a = Appender::open(&path, &other).unwrap();
        a.append(&[copied("z", 9)]).unwrap();
        assert_eq!(read(&path, &other).unwrap().records, [copied("z", 9)]);
    }
}
