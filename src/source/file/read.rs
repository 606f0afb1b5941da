//! Reading a plain file: a chunk from the file's offset cut into records
//! by its line cutter, handed to the sink, and committed with the file's new
//! checkpoint (offset, tail, parser state) in one transaction.

use super::identify::{Body, Identified};
use super::*;

impl FileSource {
    pub(super) fn read_file(&mut self, id: FileId, closing: bool) -> Result<Progress, ReadError> {
        let Some(t) = self.tracked.get_mut(&id) else {
            return Ok(Progress::Idle);
        };
        let meta = t.handle()?.metadata()?;
        let size = meta.len();
        t.size = size;
        t.modified = meta.modified().ok();
        // A file rewritten to the same size changes nothing but its bytes:
        // an idle file is checked too (two small reads from the page cache).
        let mut progress = Progress::Idle;
        if t.gz.is_none()
            && t.ident.is_some()
            && (size != t.verified_size || size <= t.offset)
            && self.rewritten(id, size)?
        {
            progress = Progress::Read;
        }
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        // Decided when the file is identified, not when it is opened: a
        // compressor's output is empty for a moment after its creation, and
        // a parked file's inode may since hold a compressed file.
        if t.ident.is_none() && t.gz.is_none() && t.handle().is_ok_and(gzip_magic) {
            t.gz = Some(Gz::default());
        }
        if t.gz.is_some() {
            return self.read_gz(id, size);
        }
        if t.ident.is_none() {
            match self.identify(id, size, Body::Plain, closing)? {
                Identified::Yes => {}
                Identified::NoFirstLine | Identified::Waiting | Identified::ReadWhole => {
                    return Ok(progress)
                }
                Identified::Unreadable(e) => return Err(ReadError::Io(e)),
            }
        }
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        if size <= t.offset {
            if closing && t.cutter.has_open_record() {
                return self.cut_and_commit(id, &[], true);
            }
            return self.flush_stale(id).map(
                |flushed| {
                    if flushed {
                        Progress::Read
                    } else {
                        progress
                    }
                },
            );
        }
        let chunk = READ_CHUNK.max(t.cutter.max_line() + 1);
        let want = ((size - t.offset) as usize).min(chunk);
        let mut buf = std::mem::take(&mut self.read_buf);
        buf.resize(want, 0);
        let n = read_full_at(t.handle()?, &mut buf, t.offset)?;
        buf.truncate(n);
        let at_end = closing && t.offset + n as u64 >= size;
        let result = self.cut_and_commit(id, &buf, at_end);
        self.read_buf = buf;
        result
    }

    /// Runs `f` with the file's line cutter, a callback that hands each
    /// record it emits to the sink (which holds nothing before), and a test
    /// of whether the events held reached what one commit may hold.
    pub(super) fn cut_with<R>(
        &mut self,
        id: FileId,
        f: impl FnOnce(&mut LineCutter, &mut dyn FnMut(Line<'_>), &mut dyn FnMut() -> bool) -> R,
    ) -> Result<R, ReadError> {
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let sink = self.sink.as_mut();
        sink.discard_held();
        let read_at = Timestamp::now();
        let Tracked {
            cutter,
            slot,
            ident,
            path,
            file,
            ..
        } = t;
        let slot = *slot.get_or_insert_with(|| {
            let owner = file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map(|m| m.uid());
            sink.open_stream(Some(path), owner, None)
        });
        let stream = ident
            .as_ref()
            .map(|i| i.stream.as_str())
            .unwrap_or_default();
        let held = std::cell::Cell::new(0usize);
        let room = COMMIT_MAX_EVENT_BYTES.min(sink.commit_room());
        let sink = std::cell::RefCell::new(sink);
        let mut emit = |line: Line<'_>| {
            let mut sink = sink.borrow_mut();
            sink.record(
                slot,
                RecordIn {
                    stream,
                    position: line.position,
                    bytes: line.bytes,
                    read_at,
                    metadata: None,
                    fields: &[],
                },
            );
            held.set(sink.held_bytes());
        };
        // At least one record a commit, however little room there is.
        let mut full = || held.get() > 0 && held.get() >= room;
        Ok(f(cutter, &mut emit, &mut full))
    }

    /// Emits a multiline record whose timeout passed; true if one was.
    pub(super) fn flush_stale(&mut self, id: FileId) -> Result<bool, ReadError> {
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        if !t.cutter.has_open_record() {
            return Ok(false);
        }
        let flushed = self.cut_with(id, |cutter, sink, _| cutter.flush_if_stale(sink))?;
        if flushed {
            self.commit(id)?;
        }
        Ok(flushed)
    }

    /// Cuts `buf` (file bytes at the file's offset) into records, parses them
    /// and commits the events with the new checkpoint.
    pub(super) fn cut_and_commit(
        &mut self,
        id: FileId,
        buf: &[u8],
        at_end: bool,
    ) -> Result<Progress, ReadError> {
        let base = self.tracked.get(&id).ok_or_else(gone)?.offset;
        let (consumed, truncated) = self.cut_with(id, |cutter, sink, full| {
            let before = cutter.stats.truncated;
            let consumed = cutter.feed_until(buf, base, at_end, sink, full);
            (consumed, cutter.stats.truncated - before)
        })?;
        if truncated > 0 {
            self.stats
                .truncated_lines
                .fetch_add(truncated, Ordering::Relaxed);
        }
        if consumed == 0 && self.sink.held_bytes() == 0 {
            return self
                .flush_stale(id)
                .map(|f| if f { Progress::Read } else { Progress::Idle });
        }
        self.tracked.get_mut(&id).ok_or_else(gone)?.offset += consumed as u64;
        self.stats
            .bytes_read
            .fetch_add(consumed as u64, Ordering::Relaxed);
        self.commit(id)?;
        Ok(Progress::Read)
    }

    /// Has the sink commit the events it holds with the file's checkpoint.
    pub(super) fn commit(&mut self, id: FileId) -> Result<(), ReadError> {
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let Some(ident) = &t.ident else {
            return Ok(());
        };
        let position = t.cutter.safe_position(t.offset);
        let tail = match &t.gz {
            // A compressed file is never rewritten in place: no tail needed.
            Some(_) => Tail::default(),
            None => tail_of_file(t.handle()?, position, TAIL_BYTES as u16)?.unwrap_or_default(),
        };
        let complete = t.gz.as_ref().is_some_and(|g| g.done);
        let cp = Checkpoint {
            offset: position,
            skipping: t.cutter.skipping(),
            complete,
            tail,
            stream: ident.stream.clone(),
            closed_at: 0,
            disk_size: if complete { t.size } else { 0 },
            path: t.path.clone(),
            owner: Some(t.owner),
            parser_state: t
                .slot
                .map(|slot| self.sink.stream_state(slot))
                .unwrap_or_default(),
        };
        self.sink.commit(&ident.key, &cp.encode())?;
        t.committed = (position, tail);
        Ok(())
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub(crate) fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(r) => n += r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Tail of the `len` bytes before `offset`; None if the file is shorter.
pub(crate) fn tail_of_file(file: &File, offset: u64, len: u16) -> std::io::Result<Option<Tail>> {
    let len = u64::from(len).min(offset);
    let mut buf = vec![0u8; len as usize];
    let n = read_full_at(file, &mut buf, offset - len)?;
    // A full read reaches `offset`; only an empty tail needs the size.
    let long_enough = n as u64 == len && (len > 0 || file.metadata()?.len() >= offset);
    Ok(long_enough.then(|| Tail::of(&buf)))
}

/// Where `start_at = "end"` starts: after the last complete line.
pub(super) fn end_of_last_line(file: &File, size: u64) -> std::io::Result<u64> {
    let window = size.min(64 << 10);
    let mut buf = vec![0u8; window as usize];
    let n = read_full_at(file, &mut buf, size - window)?;
    Ok(match memchr::memrchr(b'\n', &buf[..n]) {
        Some(i) => size - window + i as u64 + 1,
        None => size,
    })
}
