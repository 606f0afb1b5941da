//! Compressed files: a `.gz` is read once, through a decoder, never tailed;
//! a rotated copy of a file already read continues its stream, so only what
//! is new in it is read, and one never seen before is read whole.

use super::identify::{Body, Identified};
use super::*;

impl FileSource {
    /// Reads a compressed file: recognised by the fingerprint of its
    /// decompressed start, so a rotated copy of a file already read is not
    /// read again; a `.gz` never seen before is read whole (backfill).
    pub(super) fn read_gz(&mut self, id: FileId, size: u64) -> Result<Progress, ReadError> {
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let gz = t.gz.as_mut().ok_or_else(gone)?;
        if gz.done || gz.failed_at_size == Some(size) {
            return Ok(Progress::Idle);
        }
        if t.ident.is_none() {
            match self.identify(id, size, Body::Compressed, false)? {
                Identified::Yes => {}
                Identified::NoFirstLine | Identified::ReadWhole => {
                    let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
                    t.gz.as_mut().ok_or_else(gone)?.done = true;
                    return Ok(Progress::Idle);
                }
                Identified::Waiting => return Ok(Progress::Idle),
                Identified::Unreadable(e) => return self.gz_failed(id, size, e),
            }
        }
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let Tracked { file, gz, .. } = t;
        let gz = gz.as_mut().ok_or_else(gone)?;
        if gz.decoder.is_none() && !gz.decoded_all {
            let file = file.as_ref().ok_or_else(gone)?;
            let mut d = Box::new(open_gz(file)?);
            let skip = t.offset;
            match std::io::copy(&mut (&mut d).take(skip), &mut std::io::sink()) {
                Ok(n) if n == skip => {}
                Ok(_) => {
                    // Shorter than the checkpoint: nothing new in it.
                    gz.done = true;
                    return Ok(Progress::Idle);
                }
                Err(e) => return self.gz_failed(id, size, e),
            }
            gz.decoder = Some(d);
            gz.carry.clear();
        }
        let mut buf = std::mem::take(&mut gz.carry);
        let have = buf.len();
        let mut n = 0;
        let mut at_end = gz.decoded_all;
        if !at_end {
            let chunk = READ_CHUNK.max(t.cutter.max_line() + 1);
            buf.resize(have + chunk, 0);
        }
        while have + n < buf.len() {
            let decoder = gz.decoder.as_mut().ok_or_else(gone)?;
            match decoder.read(&mut buf[have + n..]) {
                Ok(0) => {
                    at_end = true;
                    break;
                }
                Ok(r) => n += r,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    buf.truncate(have);
                    return self.gz_failed(id, size, e);
                }
            }
        }
        buf.truncate(have + n);
        if at_end {
            gz.decoded_all = true;
            gz.decoder = None;
        }
        let before = t.offset;
        let result = self.cut_and_commit(id, &buf, at_end);
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        let consumed = (t.offset - before) as usize;
        // What was not consumed (a partial line, or lines past what one
        // commit holds) waits for the next round.
        buf.drain(..consumed.min(buf.len()));
        let rest = buf.len();
        if let Some(gz) = t.gz.as_mut() {
            gz.carry = buf;
            if at_end && rest == 0 {
                gz.done = true;
            }
        }
        result?;
        if at_end && rest == 0 {
            // Record the file as read whole, so a restart need not decompress it.
            self.sink.discard_held();
            self.commit(id)?;
        }
        Ok(Progress::Read)
    }

    pub(super) fn gz_failed(
        &mut self,
        id: FileId,
        size: u64,
        e: std::io::Error,
    ) -> Result<Progress, ReadError> {
        let t = self.tracked.get_mut(&id).ok_or_else(gone)?;
        debug!(source = %self.name, path = %t.path.display(), error = %e, "cannot decompress (yet); retrying when the file changes");
        if let Some(gz) = t.gz.as_mut() {
            gz.decoder = None;
            gz.decoded_all = false;
            gz.carry.clear();
            gz.failed_at_size = Some(size);
        }
        Ok(Progress::Idle)
    }
}

/// Tail of the decompressed bytes before `offset`.
pub(crate) fn gz_tail(file: &File, offset: u64, len: u16) -> std::io::Result<Option<Tail>> {
    let len = u64::from(len).min(offset);
    let mut d = open_gz(file)?;
    let skipped = std::io::copy(&mut (&mut d).take(offset - len), &mut std::io::sink())?;
    if skipped < offset - len {
        return Ok(None);
    }
    let mut buf = Vec::with_capacity(len as usize);
    (&mut d).take(len).read_to_end(&mut buf)?;
    Ok((buf.len() as u64 == len).then(|| Tail::of(&buf)))
}

pub(crate) fn open_gz(file: &File) -> std::io::Result<MultiGzDecoder<BufReader<File>>> {
    let f = file.try_clone()?;
    // try_clone shares the position: read from the start through our own handle.
    let f = reopen_at_start(f)?;
    Ok(MultiGzDecoder::new(BufReader::with_capacity(256 << 10, f)))
}

pub(super) fn reopen_at_start(mut f: File) -> std::io::Result<File> {
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(0))?;
    Ok(f)
}

pub(crate) fn gzip_magic(file: &File) -> bool {
    let mut magic = [0u8; 2];
    matches!(file.read_at(&mut magic, 0), Ok(2)) && magic == [0x1f, 0x8b]
}
