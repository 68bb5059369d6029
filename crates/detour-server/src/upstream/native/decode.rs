//! The response body's framing, decoded from the connection's read buffer.
//!
//! [`Decoder::decode`] takes what the buffer holds and says what it found: a
//! piece of data, the trailers, the end, or that it needs more bytes. It
//! never reads the transport, so it is a pure function of the bytes and can
//! be tested (and fuzzed) on any split of them.
//!
//! The chunked grammar is RFC 9112 §7.1 as hyper's client reads it, byte
//! for byte: a hex size (no sign, no overflow), optional spaces or tabs,
//! optional extensions (ignored, at most 16 KiB over the whole body, never a
//! bare LF), CRLF; the data and its CRLF; after the last chunk, trailer lines
//! (at most [`MAX_HEADERS`] lines and 16 KiB) and the final CRLF.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::head::{Framing, MAX_HEADERS};

/// Most bytes of chunk extensions over one body (hyper's limit too).
const EXTENSIONS_LIMIT: u64 = 16 * 1024;
/// Most bytes of trailer section (hyper's limit too).
const TRAILERS_LIMIT: usize = 16 * 1024;

/// What the decoder found in the buffer.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// A piece of the body.
    Data(Bytes),
    /// The trailer fields of a chunked body; the end follows.
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// The buffer holds no more of the body.
    NeedMore,
}

/// Why a body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The connection closed before the framing said the body ended.
    Incomplete,
    /// A byte the chunked grammar does not allow here.
    Chunked(&'static str),
    /// Chunk extensions or trailers over their limits.
    TooLarge(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Incomplete => f.write_str("connection closed before the body ended"),
            DecodeError::Chunked(what) => write!(f, "invalid chunked body: {what}"),
            DecodeError::TooLarge(what) => write!(f, "{what} over limit"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Where the chunked grammar is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The first digit of a size.
    Start,
    /// More digits, or what ends the size.
    Size,
    /// Spaces or tabs after the size.
    SizeLws,
    /// Inside an extension, until CR.
    Extension,
    /// The LF ending a size line.
    SizeLf,
    /// Data, this many bytes left in the chunk.
    Body,
    /// The CR after a chunk's data.
    BodyCr,
    /// The LF after a chunk's data.
    BodyLf,
    /// The start of a trailer line, or the final CR.
    EndCr,
    /// Inside a trailer line.
    Trailer,
    /// The LF ending a trailer line.
    TrailerLf,
    /// The final LF.
    EndLf,
}

#[derive(Debug)]
struct Chunked {
    state: Chunk,
    /// The size being read, then the bytes left of the chunk.
    size: u64,
    extensions: u64,
    trailers: Option<BytesMut>,
    trailer_lines: usize,
}

#[derive(Debug)]
enum Kind {
    Length(u64),
    Chunked(Box<Chunked>),
    Close,
    /// The end was reported.
    Done,
}

/// A response body's decoder.
#[derive(Debug)]
pub(crate) struct Decoder {
    kind: Kind,
}

impl Decoder {
    /// A decoder for a body framed as `framing`.
    pub(crate) fn new(framing: Framing) -> Self {
        let kind = match framing {
            Framing::Length(0) => Kind::Done,
            Framing::Length(n) => Kind::Length(n),
            Framing::Chunked => Kind::Chunked(Box::new(Chunked {
                state: Chunk::Start,
                size: 0,
                extensions: 0,
                trailers: None,
                trailer_lines: 0,
            })),
            Framing::Close => Kind::Close,
        };
        Decoder { kind }
    }

    /// Whether the whole body was decoded.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.kind, Kind::Done)
    }

    /// Bytes of the body still expected, when the framing says.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.kind {
            Kind::Length(n) => Some(n),
            Kind::Done => Some(0),
            _ => None,
        }
    }

    /// Decode from the front of `buf`, consuming what was decoded. Bytes
    /// after the body's end stay in `buf`.
    ///
    /// # Errors
    /// [`DecodeError`] for a chunked body the grammar refuses.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        match &mut self.kind {
            Kind::Done => Ok(Decoded::End),
            Kind::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= take as u64;
                if *left == 0 {
                    self.kind = Kind::Done;
                }
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            Kind::Close => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                Ok(Decoded::Data(buf.split().freeze()))
            }
            Kind::Chunked(c) => {
                let out = c.decode(buf)?;
                // Done with its trailers already: whoever reads them may
                // stop there (hyper's server does), and the connection must
                // still count as read to its end.
                if matches!(out, Decoded::End | Decoded::Trailers(_)) {
                    self.kind = Kind::Done;
                }
                Ok(out)
            }
        }
    }

    /// The transport closed and `decode` had asked for more.
    ///
    /// # Errors
    /// [`DecodeError::Incomplete`] unless the body runs to the close.
    pub(crate) fn eof(&mut self) -> Result<Decoded, DecodeError> {
        match self.kind {
            Kind::Close | Kind::Done => {
                self.kind = Kind::Done;
                Ok(Decoded::End)
            }
            _ => Err(DecodeError::Incomplete),
        }
    }
}

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        loop {
            if self.state == Chunk::Body {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = Chunk::BodyCr;
                }
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            if self.state == Chunk::EndLf && buf.first() == Some(&b'\n') {
                buf.advance(1);
                return self.end();
            }
            let Some(&byte) = buf.first() else {
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            self.state = self.step(byte)?;
        }
    }

    /// The body ended: its trailers first, if it had any.
    fn end(&mut self) -> Result<Decoded, DecodeError> {
        let Some(mut raw) = self.trailers.take() else {
            return Ok(Decoded::End);
        };
        push(&mut raw, b'\n')?;
        // The decoder is done from here: `Decoder::decode` drops this state.
        trailers(&raw, self.trailer_lines).map(Decoded::Trailers)
    }

    /// One byte of the grammar outside chunk data.
    fn step(&mut self, byte: u8) -> Result<Chunk, DecodeError> {
        use Chunk::*;
        let bad = |what| Err(DecodeError::Chunked(what));
        Ok(match (self.state, byte) {
            (Start | Size, b) if b.is_ascii_hexdigit() => {
                let digit = u64::from(hex(b));
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .ok_or(DecodeError::Chunked("chunk size overflows"))?;
                Size
            }
            (Start, _) => return bad("missing chunk size digit"),
            (Size | SizeLws, b' ' | b'\t') => SizeLws,
            (Size | SizeLws, b';') => Extension,
            (Size | SizeLws, b'\r') => SizeLf,
            (Size, _) => return bad("invalid chunk size"),
            (SizeLws, _) => return bad("invalid whitespace after chunk size"),
            (Extension, b'\r') => SizeLf,
            (Extension, b'\n') => return bad("chunk extension holds a bare LF"),
            (Extension, _) => {
                self.extensions += 1;
                if self.extensions >= EXTENSIONS_LIMIT {
                    return Err(DecodeError::TooLarge("chunk extensions"));
                }
                Extension
            }
            (SizeLf, b'\n') if self.size == 0 => EndCr,
            (SizeLf, b'\n') => Body,
            (SizeLf, _) => return bad("chunk size line without LF"),
            (BodyCr, b'\r') => BodyLf,
            (BodyCr, _) => return bad("chunk data not followed by CR"),
            (BodyLf, b'\n') => Start,
            (BodyLf, _) => return bad("chunk data not followed by LF"),
            (EndCr, b'\r') => {
                if let Some(t) = &mut self.trailers {
                    push(t, b'\r')?;
                }
                EndLf
            }
            (EndCr, b) => {
                let t = self
                    .trailers
                    .get_or_insert_with(|| BytesMut::with_capacity(64));
                push(t, b)?;
                Trailer
            }
            (Trailer, b) => {
                if let Some(t) = &mut self.trailers {
                    push(t, b)?;
                }
                if b == b'\r' {
                    TrailerLf
                } else {
                    Trailer
                }
            }
            (TrailerLf, b'\n') => {
                if self.trailer_lines >= MAX_HEADERS {
                    return Err(DecodeError::TooLarge("trailer lines"));
                }
                self.trailer_lines += 1;
                if let Some(t) = &mut self.trailers {
                    push(t, b'\n')?;
                }
                EndCr
            }
            (TrailerLf, _) => return bad("trailer line without LF"),
            (EndLf, _) => return bad("last chunk not followed by CRLF"),
            (Body, _) => unreachable_body(),
        })
    }
}

/// `decode` handles chunk data and the end before calling `step`.
fn unreachable_body() -> Chunk {
    debug_assert!(false, "chunk data is not stepped byte by byte");
    Chunk::Body
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// One more byte of trailer section, within its limit.
fn push(t: &mut BytesMut, b: u8) -> Result<(), DecodeError> {
    t.extend_from_slice(&[b]);
    if t.len() >= TRAILERS_LIMIT {
        return Err(DecodeError::TooLarge("trailers"));
    }
    Ok(())
}

/// The trailer section's `lines` lines as fields.
fn trailers(raw: &[u8], lines: usize) -> Result<HeaderMap, DecodeError> {
    let mut slots = vec![httparse::EMPTY_HEADER; lines];
    let fields = match httparse::parse_headers(raw, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err(DecodeError::Chunked("malformed trailer field")),
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| DecodeError::Chunked("invalid trailer name"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| DecodeError::Chunked("invalid trailer value"))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body's bytes, its trailers, and what was left in the buffer.
    type Decoded3 = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

    /// Everything `body` decodes to, fed `step` bytes at a time, then EOF.
    fn run(framing: Framing, body: &[u8], step: usize) -> Result<Decoded3, DecodeError> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => data.extend_from_slice(&b),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers, buf.to_vec())),
                Decoded::NeedMore if fed < body.len() => {
                    let end = (fed + step).min(body.len());
                    buf.extend_from_slice(&body[fed..end]);
                    fed = end;
                }
                Decoded::NeedMore => match d.eof()? {
                    Decoded::End => return Ok((data, trailers, Vec::new())),
                    other => panic!("eof gave {other:?}"),
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_on_any_split() {
        let wire = b"4;ext=1\r\nWiki\r\n5 \r\npedia\r\n0\r\nx-sum: 9\r\n\r\nNEXT";
        for step in 1..wire.len() {
            let (data, trailers, rest) = run(Framing::Chunked, wire, step).unwrap();
            assert_eq!(data, b"Wikipedia");
            assert_eq!(trailers.unwrap()["x-sum"], "9");
            // Bytes after the body are not the body's.
            assert!(rest.is_empty() || b"NEXT".starts_with(&rest), "{rest:?}");
        }
    }

    #[test]
    fn a_body_is_done_once_its_trailers_are_out() {
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"1\r\na\r\n0\r\nx-sum: 1\r\n\r\n"[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"a"))
        );
        assert!(matches!(d.decode(&mut buf).unwrap(), Decoded::Trailers(_)));
        // Whoever reads the trailers may stop there (hyper's server does):
        // the body counts as read to its end already.
        assert!(d.is_done());
        assert!(buf.is_empty());
    }

    #[test]
    fn chunked_grammar_errors() {
        for (wire, why) in [
            (&b"x\r\n"[..], "missing chunk size digit"),
            (b"4x\r\n", "invalid chunk size"),
            (b"4 x\r\n", "invalid whitespace after chunk size"),
            (b"4;a\nWiki", "chunk extension holds a bare LF"),
            (b"4\rX", "chunk size line without LF"),
            (b"4\r\nWikiX", "chunk data not followed by CR"),
            (b"4\r\nWiki\rX", "chunk data not followed by LF"),
            (b"0\r\n\rX", "last chunk not followed by CRLF"),
            (b"0\r\na: b\rX", "trailer line without LF"),
            (b"0\r\nnocolon\r\n\r\n", "malformed trailer field"),
            (b"fffffffffffffffff\r\n", "chunk size overflows"),
        ] {
            assert_eq!(
                run(Framing::Chunked, wire, 3).unwrap_err(),
                DecodeError::Chunked(why),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn limits_hold() {
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'e', 17 * 1024));
        assert_eq!(
            run(Framing::Chunked, &long, 4096).unwrap_err(),
            DecodeError::TooLarge("chunk extensions")
        );
        let mut many = b"0\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("t{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            run(Framing::Chunked, &many, 4096).unwrap_err(),
            DecodeError::TooLarge("trailer lines")
        );
    }

    #[test]
    fn lengths_and_close() {
        assert_eq!(run(Framing::Length(3), b"abcde", 2).unwrap().0, b"abc");
        assert_eq!(
            run(Framing::Length(9), b"abc", 2).unwrap_err(),
            DecodeError::Incomplete
        );
        assert_eq!(run(Framing::Close, b"abc", 2).unwrap().0, b"abc");
        assert_eq!(
            run(Framing::Chunked, b"3\r\nabc\r\n", 2).unwrap_err(),
            DecodeError::Incomplete
        );
        assert!(Decoder::new(Framing::Length(0)).is_done());
    }
}
