//! The chunk format: a run of events as one segment holds it (header with
//! format, crc32, count and event end offsets, then the events' bytes), the
//! [`Pointer`] sled keeps to find it, and the check a chunk passes when it is
//! read back.

use std::ops::Range;

use crate::event::{EventBuf, Timestamp};

/// Target size of one chunk: big enough that per-chunk costs vanish, small
/// enough that a batch does not read far past what it sends.
pub const CHUNK_TARGET_BYTES: usize = 256 << 10;
const CHUNK_FORMAT: u8 = 1;
/// format, crc32 of the rest, event count.
pub(super) const HEADER_LEN: usize = 1 + 4 + 4;
pub(super) const POINTER_LEN: usize = 8 + 8 + 4 + 4 + 8;

/// Where a chunk is stored, as kept in sled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pointer {
    pub(super) segment: u64,
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) count: u32,
    pub(super) committed_at: Timestamp,
}

impl Pointer {
    pub(super) fn encode(&self) -> [u8; POINTER_LEN] {
        let mut b = [0u8; POINTER_LEN];
        b[0..8].copy_from_slice(&self.segment.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        b[20..24].copy_from_slice(&self.count.to_le_bytes());
        b[24..32].copy_from_slice(&self.committed_at.unix_micros.to_le_bytes());
        b
    }

    pub(super) fn decode(b: &[u8]) -> Option<Pointer> {
        let u64_at = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
        };
        let u32_at = |i: usize| {
            b.get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_le_bytes)
        };
        Some(Pointer {
            segment: u64_at(0)?,
            offset: u64_at(8)?,
            len: u32_at(16)?,
            count: u32_at(20)?,
            committed_at: Timestamp::from_unix_micros(u64_at(24)? as i64),
        })
    }
}

/// A chunk read back from its segment and checked.
pub(super) struct Chunk {
    bytes: Vec<u8>,
    pub(super) count: u32,
    pub(super) committed_at: Timestamp,
}

impl Chunk {
    pub(super) fn check(bytes: Vec<u8>, ptr: &Pointer) -> Result<Chunk, String> {
        if bytes.len() < HEADER_LEN || bytes[0] != CHUNK_FORMAT {
            return Err("bad header".into());
        }
        let crc = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        if crc32fast::hash(&bytes[5..]) != crc {
            return Err("checksum mismatch".into());
        }
        let count = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        let table_end = HEADER_LEN + count as usize * 4;
        if count != ptr.count || bytes.len() < table_end {
            return Err("event count does not match its pointer".into());
        }
        let chunk = Chunk {
            bytes,
            count,
            committed_at: ptr.committed_at,
        };
        if count > 0 && chunk.end(count - 1) > chunk.bytes.len() - table_end {
            return Err("offsets past the end".into());
        }
        Ok(chunk)
    }

    fn end(&self, i: u32) -> usize {
        let at = HEADER_LEN + i as usize * 4;
        let b = &self.bytes[at..at + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    }

    pub(super) fn event(&self, i: u32) -> &[u8] {
        let data = &self.bytes[HEADER_LEN + self.count as usize * 4..];
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        &data[start..self.end(i)]
    }
}

/// The header of the chunk of `events[range]` (format, crc32, count, event
/// end offsets); the chunk is this header followed by the events' bytes,
/// which are written from where they are rather than copied.
pub(super) fn chunk_header(events: &EventBuf, range: Range<usize>) -> Vec<u8> {
    let base = if range.start == 0 {
        0
    } else {
        events.ends[range.start - 1]
    };
    let data = &events.bytes[base as usize..events.ends[range.end - 1] as usize];
    let mut header = Vec::with_capacity(HEADER_LEN + range.len() * 4);
    header.push(CHUNK_FORMAT);
    header.extend_from_slice(&[0; 4]);
    header.extend_from_slice(&(range.len() as u32).to_le_bytes());
    for &end in &events.ends[range] {
        header.extend_from_slice(&(end - base).to_le_bytes());
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[5..]);
    crc.update(data);
    let crc = crc.finalize().to_le_bytes();
    header[1..5].copy_from_slice(&crc);
    header
}

#[cfg(test)]
mod tests {
    use super::super::tests::events;
    use super::super::Queue;

    #[test]
    fn a_damaged_chunk_is_set_aside_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::open(dir.path(), 8 << 20).unwrap();
            q.commit(&events(3, "a"), b"src", b"3").unwrap();
        }
        let seg = std::fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&seg).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 0xff;
        std::fs::write(&seg, bytes).unwrap();
        let q = Queue::open(dir.path(), 8 << 20).unwrap();
        assert!(q.peek_batch(10, usize::MAX).unwrap().is_none());
        assert_eq!(q.damaged_chunks(), 1);
        let letters = q.dead_letter_list().unwrap();
        assert!(letters[0].1.message.contains("checksum"), "{letters:?}");
    }
}
