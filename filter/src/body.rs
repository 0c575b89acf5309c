//! New request and response bodies, written so that memory stays bounded: a translator writes into
//! fixed-size chunks ([`ChunkedBody`]); an in-place edit replaces only the head of the body
//! ([`NewBody::Head`]). The exchange hands either to the host without joining it into one buffer.

use std::io;

/// Chunks are this large: big enough that host calls stay few, small enough that the last,
/// partly filled one wastes little.
pub const CHUNK: usize = 64 * 1024;

/// A body written in fixed-size chunks. Writing never reallocates what was written: memory is the
/// body's length rounded up to one chunk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChunkedBody {
    chunks: Vec<Vec<u8>>,
    /// Every byte written, the handed-out ones included.
    len: usize,
    /// The first `handed_out` bytes went to a [`Sink`] while the body was written; `chunks` holds
    /// the rest.
    handed_out: usize,
}

/// Where a body being written hands each full chunk: the host's body buffer, so that a translation
/// larger than its input never sits whole in the VM (peak memory is the input plus one chunk).
pub trait Sink {
    fn take(&mut self, chunk: &[u8]);
}

/// Writes a [`ChunkedBody`], handing full chunks to a sink when there is one.
pub struct BodyWriter<'s> {
    body: ChunkedBody,
    sink: Option<&'s mut dyn Sink>,
}

impl<'s> BodyWriter<'s> {
    pub fn new(sink: Option<&'s mut dyn Sink>) -> Self {
        BodyWriter { body: ChunkedBody::new(), sink }
    }

    pub fn len(&self) -> usize {
        self.body.len
    }

    pub fn is_empty(&self) -> bool {
        self.body.len == 0
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        let Some(sink) = self.sink.as_deref_mut() else {
            self.body.extend_from_slice(bytes);
            return;
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            let held = self.body.chunks.first().map_or(0, Vec::len);
            let (now, later) = rest.split_at((CHUNK - held).min(rest.len()));
            self.body.extend_from_slice(now);
            rest = later;
            if let Some(full) = self.body.chunks.first_mut().filter(|c| c.len() >= CHUNK) {
                sink.take(full);
                self.body.handed_out += full.len();
                // The chunk's memory is reused for the next one.
                full.clear();
            }
        }
    }

    /// The written body: what was not handed out, and how much was.
    pub fn finish(mut self) -> ChunkedBody {
        self.body.chunks.retain(|c| !c.is_empty());
        self.body
    }
}

impl io::Write for BodyWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl From<BodyWriter<'_>> for ChunkedBody {
    fn from(w: BodyWriter<'_>) -> Self {
        w.finish()
    }
}

impl ChunkedBody {
    pub fn new() -> Self {
        ChunkedBody::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes already handed to a [`Sink`] (they are not in [`chunks`](Self::chunks)).
    pub fn handed_out(&self) -> usize {
        self.handed_out
    }

    /// The chunks not handed out, in order.
    pub fn chunks(&self) -> impl DoubleEndedIterator<Item = &[u8]> {
        self.chunks.iter().map(Vec::as_slice)
    }

    pub fn extend_from_slice(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len();
        while !bytes.is_empty() {
            let room = match self.chunks.last() {
                Some(last) if last.len() < CHUNK => CHUNK - last.len(),
                _ => {
                    self.chunks.push(Vec::with_capacity(CHUNK.min(bytes.len().max(256))));
                    CHUNK
                }
            };
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            if let Some(last) = self.chunks.last_mut() {
                if last.capacity() - last.len() < now.len() {
                    // The first small allocation grows once, to a whole chunk at most.
                    last.reserve_exact(CHUNK - last.len());
                }
                last.extend_from_slice(now);
            }
            bytes = later;
        }
    }

    /// The whole body in one buffer (tests, and small bodies such as error answers).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out
    }
}

impl io::Write for ChunkedBody {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl From<Vec<u8>> for ChunkedBody {
    fn from(v: Vec<u8>) -> Self {
        let len = v.len();
        ChunkedBody { chunks: if v.is_empty() { Vec::new() } else { vec![v] }, len, handed_out: 0 }
    }
}

/// A new request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewBody {
    /// The whole body is replaced.
    Whole(ChunkedBody),
    /// The first `replaced` bytes are replaced by `head`; the rest of the body stays as it came.
    Head { replaced: usize, head: Vec<u8> },
}

impl NewBody {
    pub fn whole(body: impl Into<ChunkedBody>) -> Self {
        NewBody::Whole(body.into())
    }

    /// The length of the new body, given the original's.
    pub fn len(&self, original_len: usize) -> usize {
        match self {
            NewBody::Whole(b) => b.len(),
            NewBody::Head { replaced, head } => original_len.saturating_sub(*replaced) + head.len(),
        }
    }

    /// The parts of the new body in order, borrowing the original's tail; a whole body's parts
    /// start after what it handed out while being written.
    pub fn parts<'a>(&'a self, original: &'a [u8]) -> Vec<&'a [u8]> {
        match self {
            NewBody::Whole(b) => b.chunks().collect(),
            NewBody::Head { replaced, head } => {
                vec![head.as_slice(), original.get(*replaced..).unwrap_or_default()]
            }
        }
    }

    /// The new body in one buffer (tests and small bodies only).
    pub fn apply_to(&self, original: &[u8]) -> Vec<u8> {
        self.parts(original).concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn chunks_fill_up_without_reallocating() {
        let mut b = ChunkedBody::new();
        b.write_all(b"abc").unwrap();
        b.write_all(&vec![b'x'; CHUNK * 2 + 10]).unwrap();
        assert_eq!(b.len(), CHUNK * 2 + 13);
        let sizes: Vec<_> = b.chunks().map(<[u8]>::len).collect();
        assert_eq!(sizes, [CHUNK, CHUNK, 13]);
        assert!(b.chunks.iter().all(|c| c.capacity() <= CHUNK));
        assert_eq!(&b.to_vec()[..4], b"abcx");
    }

    #[derive(Default)]
    struct Taken(Vec<Vec<u8>>);
    impl Sink for Taken {
        fn take(&mut self, chunk: &[u8]) {
            self.0.push(chunk.to_vec());
        }
    }

    #[test]
    fn a_writer_hands_out_full_chunks_and_keeps_the_rest() {
        let mut taken = Taken::default();
        let mut w = BodyWriter::new(Some(&mut taken));
        w.write_all(b"ab").unwrap();
        w.write_all(&vec![b'x'; CHUNK * 2]).unwrap();
        w.write_all(b"yz").unwrap();
        let body = w.finish();
        assert_eq!((body.len(), body.handed_out()), (CHUNK * 2 + 4, CHUNK * 2));
        assert_eq!(taken.0.iter().map(Vec::len).collect::<Vec<_>>(), [CHUNK, CHUNK]);
        assert_eq!(&taken.0[0][..3], b"abx");
        let mut all = taken.0.concat();
        all.extend(body.chunks().flatten());
        assert_eq!(all.len(), CHUNK * 2 + 4);
        assert!(all.ends_with(b"xxyz"));

        // Without a sink it is a plain chunked body.
        let mut w = BodyWriter::new(None);
        w.write_all(&vec![b'x'; CHUNK + 1]).unwrap();
        let body = w.finish();
        assert_eq!((body.len(), body.handed_out(), body.chunks().count()), (CHUNK + 1, 0, 2));
    }

    #[test]
    fn head_replacement_keeps_the_tail() {
        let n = NewBody::Head { replaced: 3, head: b"XY".to_vec() };
        assert_eq!(n.apply_to(b"abcdef"), b"XYdef");
        assert_eq!(n.len(6), 5);
    }
}
