//! Counting the rows of a COPY stream as it passes, for the archive's
//! manifest: `COPY ... TO STDOUT` does not report a count to the client
//! until the end, and tokio-postgres does not expose it.
//!
//! Text format: every row ends with a newline byte, and newlines inside
//! values are escaped (`\n`), so rows are newline bytes. Binary format: a
//! header, then per row a 16-bit field count and length-prefixed fields,
//! then a -1 trailer; the counter walks the lengths without copying.

/// Incremental row counter over arbitrarily cut COPY data.
#[derive(Debug)]
pub enum RowCounter {
    Text {
        rows: u64,
    },
    Binary {
        rows: u64,
        state: BinState,
        /// Bytes still to skip in the current state.
        skip: u64,
        /// A partially read 2- or 4-byte integer.
        partial: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinState {
    /// Signature (11) + flags (4), then the extension length.
    Header,
    HeaderExtLen,
    HeaderExt,
    FieldCount,
    FieldLen {
        left: u16,
    },
    FieldData {
        left: u16,
    },
    Trailer,
}

impl RowCounter {
    pub fn new(binary: bool) -> Self {
        if binary {
            RowCounter::Binary {
                rows: 0,
                state: BinState::Header,
                skip: 15,
                partial: Vec::new(),
            }
        } else {
            RowCounter::Text { rows: 0 }
        }
    }

    pub fn rows(&self) -> u64 {
        match self {
            RowCounter::Text { rows } | RowCounter::Binary { rows, .. } => *rows,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        match self {
            RowCounter::Text { rows } => {
                *rows += data.iter().filter(|&&b| b == b'\n').count() as u64;
            }
            RowCounter::Binary {
                rows,
                state,
                skip,
                partial,
            } => {
                while !data.is_empty() {
                    match *state {
                        BinState::Header | BinState::HeaderExt | BinState::FieldData { .. } => {
                            let n = (*skip).min(data.len() as u64) as usize;
                            data = &data[n..];
                            *skip -= n as u64;
                            if *skip == 0 {
                                *state = match *state {
                                    BinState::Header => BinState::HeaderExtLen,
                                    BinState::FieldData { left: 0 } => BinState::FieldCount,
                                    BinState::FieldData { left } => BinState::FieldLen { left },
                                    _ => BinState::FieldCount,
                                };
                                if *state == BinState::HeaderExtLen
                                    || *state == BinState::FieldCount
                                {
                                    partial.clear();
                                }
                            }
                        }
                        BinState::Trailer => return,
                        BinState::HeaderExtLen
                        | BinState::FieldCount
                        | BinState::FieldLen { .. } => {
                            let width = if *state == BinState::FieldCount { 2 } else { 4 };
                            let need = width - partial.len();
                            let n = need.min(data.len());
                            partial.extend_from_slice(&data[..n]);
                            data = &data[n..];
                            if partial.len() < width {
                                return;
                            }
                            match *state {
                                BinState::HeaderExtLen => {
                                    let len = u32::from_be_bytes(partial[..4].try_into().unwrap());
                                    *skip = len as u64;
                                    *state = if len == 0 {
                                        BinState::FieldCount
                                    } else {
                                        BinState::HeaderExt
                                    };
                                }
                                BinState::FieldCount => {
                                    let n = i16::from_be_bytes(partial[..2].try_into().unwrap());
                                    if n < 0 {
                                        *state = BinState::Trailer;
                                    } else {
                                        *rows += 1;
                                        *state = if n == 0 {
                                            BinState::FieldCount
                                        } else {
                                            BinState::FieldLen { left: n as u16 }
                                        };
                                    }
                                }
                                BinState::FieldLen { left } => {
                                    let len = i32::from_be_bytes(partial[..4].try_into().unwrap());
                                    let left = left - 1;
                                    if len <= 0 {
                                        // NULL (-1) or empty: no data bytes.
                                        *state = if left == 0 {
                                            BinState::FieldCount
                                        } else {
                                            BinState::FieldLen { left }
                                        };
                                    } else {
                                        *skip = len as u64;
                                        *state = BinState::FieldData { left };
                                    }
                                }
                                _ => unreachable!(),
                            }
                            partial.clear();
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream of rows given as lists of optional fields.
    fn binary(rows: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = b"PGCOPY\n\xff\r\n\0".to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&4u32.to_be_bytes());
        out.extend_from_slice(b"ext!");
        for r in rows {
            out.extend_from_slice(&(r.len() as i16).to_be_bytes());
            for f in r {
                match f {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(d) => {
                        out.extend_from_slice(&(d.len() as i32).to_be_bytes());
                        out.extend_from_slice(d);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn binary_rows_counted_however_the_stream_is_cut() {
        let rows: Vec<Vec<Option<&[u8]>>> = (0..50)
            .map(|i| match i % 4 {
                0 => vec![Some(&b"abc"[..]), None],
                1 => vec![],
                2 => vec![Some(&b""[..]), Some(&b"\n\n\xff\xff"[..]), None],
                _ => vec![Some(&[0u8; 300][..])],
            })
            .collect();
        let data = binary(&rows);
        for cut in [1, 2, 3, 5, 7, 64, 1000, data.len()] {
            let mut c = RowCounter::new(true);
            for piece in data.chunks(cut) {
                c.feed(piece);
            }
            assert_eq!(c.rows(), 50, "cut {cut}");
        }
    }

    #[test]
    fn text_rows_are_newlines() {
        let mut c = RowCounter::new(false);
        c.feed(b"1\ta\\nb\n2\t");
        c.feed(b"x\n");
        assert_eq!(c.rows(), 2);
    }
}
