//! Sealed frames: a large object (a policy version) sent as frames, each sealed with
//! AEGIS-128X4 (an AEAD of the CFRG's AEGIS family, `aegis` crate) under a key made for that
//! one transfer. The learner's raw weights port speaks this under TLS (docs/security.md): TLS
//! authenticates both ends and carries the key, then the sealed frames follow on the same TCP
//! connection outside TLS records. [`SealedWriter`] and [`SealedReader`] seal and open each
//! frame in a buffer that stays in cache between the caller's memory and the kernel's copy, so
//! every byte crosses memory once on each side, as in a plaintext transfer, and what sealing
//! adds is the cipher's arithmetic (TLS records cost two more copies of every byte on each
//! side; BENCHMARKS.md).
//!
//! What it is not: a handshake or a key exchange (TLS does both; a key never travels outside
//! it), nor a stream cipher for small messages (every frame costs a 20-byte header and tag).
//!
//! A frame on the wire: a little-endian u32 whose low 31 bits are the plaintext's length and
//! whose top bit marks the object's last frame (the writer ends every object with an empty
//! one), the ciphertext (as long as the plaintext), and the 16-byte tag. Frame `i` is sealed
//! with the nonce `i` (128-bit big-endian) and, as associated data, a domain label, the
//! object's id and `i` and the length word, so that a frame that is altered, dropped,
//! reordered, cut short, moved to another object or marked last when it was not fails to open.
//!
//! Why AEGIS-128X4 and not TLS's AES-128-GCM: both ends pass every byte of every version
//! through it, and on this project's machines it seals about 4.5 times as fast as ring's
//! AES-128-GCM and 1.4 times as fast as AEGIS-128X2 (AVX-512 runs its four lanes at once;
//! BENCHMARKS.md). It needs AES instructions (AES-NI, or the ARMv8 crypto extensions) to be
//! fast; the key and nonce are TLS-grade (128-bit key, a key per transfer, nonces never
//! repeated under a key).

use std::io::{Read, Write};

use aegis::aegis128x4::Aegis128X4;
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes in an object's key.
pub const KEY_LEN: usize = 16;
/// Bytes in an offer: the object's id (u64, little-endian) and its key, sent over TLS.
pub const OFFER_LEN: usize = 8 + KEY_LEN;
/// The byte a reader sends over TLS once it holds the offer: everything TLS carried has been
/// read, so the sealed frames may follow outside it.
pub const READY: u8 = 1;
/// The largest plaintext one frame may carry; a longer length is refused before anything is
/// read or allocated.
pub const MAX_FRAME: usize = 1 << 20;
const TAG_LEN: usize = 16;
const LAST: u32 = 1 << 31;
const LABEL: &[u8; 18] = b"paretopo-sealed-v2";

/// The key of one object, with the object's id (a policy version), which every frame's
/// associated data carries. Its `Debug` shows the id only.
pub struct ObjectKey {
    id: u64,
    bytes: [u8; KEY_LEN],
}

impl std::fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectKey").field("id", &self.id).field("key", &"[redacted]").finish()
    }
}

impl ObjectKey {
    /// A fresh random key for object `id`.
    pub fn generate(id: u64) -> std::io::Result<Self> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| std::io::Error::other("the system's random source failed"))?;
        Ok(Self::from_bytes(id, bytes))
    }

    /// The key of object `id` from its bytes (as received over TLS).
    pub fn from_bytes(id: u64, bytes: [u8; KEY_LEN]) -> Self {
        Self { id, bytes }
    }

    /// The object's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The offer naming this object and its key, to send over TLS and nowhere else.
    pub fn offer(&self) -> [u8; OFFER_LEN] {
        let mut offer = [0u8; OFFER_LEN];
        offer[..8].copy_from_slice(&self.id.to_le_bytes());
        offer[8..].copy_from_slice(&self.bytes);
        offer
    }

    /// The key an [`ObjectKey::offer`] carries.
    pub fn from_offer(offer: &[u8; OFFER_LEN]) -> Self {
        let (id, key) = offer.split_at(8);
        let id = u64::from_le_bytes(id.try_into().expect("8 bytes"));
        Self::from_bytes(id, key.try_into().expect("KEY_LEN bytes"))
    }

    fn cipher(&self, index: u64) -> Aegis128X4<TAG_LEN> {
        let mut nonce = [0u8; 16];
        nonce[8..].copy_from_slice(&index.to_be_bytes());
        Aegis128X4::new(&self.bytes, &nonce)
    }

    fn aad(&self, index: u64, word: u32) -> [u8; 38] {
        let mut aad = [0u8; 38];
        aad[..18].copy_from_slice(LABEL);
        aad[18..26].copy_from_slice(&self.id.to_le_bytes());
        aad[26..34].copy_from_slice(&index.to_le_bytes());
        aad[34..].copy_from_slice(&word.to_le_bytes());
        aad
    }
}

/// Writes an object as sealed frames to `inner`: each `write` seals up to [`MAX_FRAME`] bytes
/// of the caller's buffer as one frame, and [`SealedWriter::finish`] closes the object with an
/// empty frame marked last. A frame is sealed into a buffer of one frame, which stays in cache
/// until the kernel copies it out, so the object's bytes are read from memory once, as a
/// plaintext write reads them. Small writes make small frames (20 bytes each of header and
/// tag): write large buffers, or put a `BufWriter` in front.
pub struct SealedWriter<W: Write> {
    inner: W,
    key: ObjectKey,
    next: u64,
    staging: Vec<u8>,
}

impl<W: Write> std::fmt::Debug for SealedWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedWriter")
            .field("key", &self.key)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl<W: Write> SealedWriter<W> {
    /// Writes the object `key` names to `inner`, from its first frame.
    pub fn new(inner: W, key: ObjectKey) -> Self {
        Self { inner, key, next: 0, staging: vec![0; 4 + MAX_FRAME + TAG_LEN] }
    }

    /// Ends the object with its last frame and flushes; returns the inner writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.write_frame(&[], true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    /// Seals `plaintext` (at most [`MAX_FRAME`] bytes) as the next frame and writes it with
    /// one call.
    fn write_frame(&mut self, plaintext: &[u8], last: bool) -> std::io::Result<()> {
        debug_assert!(plaintext.len() <= MAX_FRAME);
        let word = plaintext.len() as u32 | if last { LAST } else { 0 };
        let index = self.next;
        let mut encryptor = self.key.cipher(index).encryptor(&self.key.aad(index, word));
        let (header, rest) = self.staging.split_at_mut(4);
        let (ciphertext, rest) = rest.split_at_mut(plaintext.len());
        header.copy_from_slice(&word.to_le_bytes());
        encryptor.update(plaintext, ciphertext);
        rest[..TAG_LEN].copy_from_slice(&encryptor.finalize());
        self.inner.write_all(&self.staging[..4 + plaintext.len() + TAG_LEN])?;
        self.next += 1;
        Ok(())
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let len = buf.len().min(MAX_FRAME);
        self.write_frame(&buf[..len], false)?;
        Ok(len)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads the plaintext of an object's sealed frames from `inner`. A read that can hold a whole
/// frame gets it decrypted straight into the caller's buffer, from a buffer of one frame that
/// stays in cache between the kernel's copy and the cipher (each socket read is decrypted as it
/// lands); smaller reads go through a second buffer of one frame. A frame that fails to open is
/// an `InvalidData` error (the caller's buffer then holds no plaintext of it). Any error ends
/// the object: a frame cannot be resumed halfway, so every later read fails too. After the last
/// frame, reads return 0.
pub struct SealedReader<R> {
    inner: R,
    key: ObjectKey,
    next: u64,
    staging: Vec<u8>,
    pending: Vec<u8>,
    consumed: usize,
    finished: bool,
    broken: bool,
}

impl<R> std::fmt::Debug for SealedReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedReader")
            .field("key", &self.key)
            .field("next", &self.next)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<R: Read> SealedReader<R> {
    /// Reads the object `key` names from `inner`, from its first frame.
    pub fn new(inner: R, key: ObjectKey) -> Self {
        Self {
            inner,
            key,
            next: 0,
            staging: vec![0; MAX_FRAME],
            pending: Vec::new(),
            consumed: 0,
            finished: false,
            broken: false,
        }
    }

    /// Reads the next frame's plaintext into `buf` (which is at least as long) or, when `buf`
    /// is too short, into the pending buffer; returns its length and whether it went to `buf`.
    fn next_frame(&mut self, buf: &mut [u8]) -> std::io::Result<(usize, bool)> {
        let Self { inner, key, next, staging, pending, consumed, finished, .. } = self;
        let mut word = [0u8; 4];
        inner.read_exact(&mut word)?;
        let word = u32::from_le_bytes(word);
        let len = (word & !LAST) as usize;
        if len > MAX_FRAME {
            return Err(invalid(format!("a sealed frame of {len} bytes (at most {MAX_FRAME})")));
        }
        let direct = buf.len() >= len;
        let target = if direct {
            &mut buf[..len]
        } else {
            pending.resize(len, 0);
            *consumed = 0;
            &mut pending[..]
        };
        let index = *next;
        let cipher = key.cipher(index);
        // The decryptor erases what it wrote to `target` unless the tag verifies.
        let mut decryptor = cipher.decryptor(&key.aad(index, word), target);
        let mut left = len;
        while left > 0 {
            let n = match inner.read(&mut staging[..left]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            decryptor.update(&staging[..n]).map_err(|e| invalid(e.to_string()))?;
            left -= n;
        }
        let mut tag = [0u8; TAG_LEN];
        inner.read_exact(&mut tag)?;
        if decryptor.finalize(&tag).is_err() {
            return Err(invalid(format!(
                "sealed frame {index} of object {} failed authentication",
                key.id
            )));
        }
        *next += 1;
        *finished = word & LAST != 0;
        Ok((len, direct))
    }
}

impl<R: Read> Read for SealedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.consumed < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.consumed);
                buf[..n].copy_from_slice(&self.pending[self.consumed..self.consumed + n]);
                self.consumed += n;
                return Ok(n);
            }
            if self.finished {
                return Ok(0);
            }
            if self.broken {
                return Err(invalid(format!(
                    "object {} already failed at frame {}",
                    self.key.id, self.next
                )));
            }
            let (len, direct) = match self.next_frame(buf) {
                Ok(frame) => frame,
                Err(e) => {
                    // Nothing of a frame that did not open is ever handed out.
                    self.broken = true;
                    self.pending.clear();
                    self.consumed = 0;
                    return Err(e);
                }
            };
            if direct && len > 0 {
                return Ok(len);
            }
            // An empty frame, or one now pending: go round.
        }
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seals `pieces` as one object's frames, a frame each, and the empty last frame.
    fn seal_all(key: ObjectKey, pieces: &[&[u8]]) -> Vec<u8> {
        let mut writer = SealedWriter::new(Vec::new(), key);
        for piece in pieces {
            assert_eq!(writer.write(piece).expect("write"), piece.len());
        }
        writer.finish().expect("finish")
    }

    fn key(id: u64, byte: u8) -> ObjectKey {
        ObjectKey::from_bytes(id, [byte; KEY_LEN])
    }

    #[test]
    fn reads_back_what_was_sealed_whatever_the_read_sizes() {
        // Frames of a few bytes, of MAX_FRAME and between (an empty write makes none).
        let data: Vec<u8> =
            (0..(2 * MAX_FRAME + 200_000) as u32).map(|i| (i * 7 % 251) as u8).collect();
        let cuts = [0, 10, 10, 70_000, MAX_FRAME + 70_000, 2 * MAX_FRAME, data.len()];
        let pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &data[w[0]..w[1]]).collect();
        let wire = seal_all(key(3, 1), &pieces);
        assert_eq!(
            wire.len(),
            data.len() + (pieces.iter().filter(|p| !p.is_empty()).count() + 1) * 20,
            "ciphertext as long as the plaintext"
        );
        for read_size in [1usize, 7, 4096, 65_536, 1 << 20, 3 << 20] {
            let mut reader = SealedReader::new(wire.as_slice(), key(3, 1));
            let mut out = Vec::new();
            let mut buf = vec![0u8; read_size];
            loop {
                let n = reader.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert_eq!(out, data, "reads of {read_size} bytes");
        }
        // A write longer than a frame is cut into frames of MAX_FRAME.
        let mut writer = SealedWriter::new(Vec::new(), key(3, 2));
        writer.write_all(&data).expect("write");
        let wire = writer.finish().expect("finish");
        assert_eq!(wire.len(), data.len() + (data.len().div_ceil(MAX_FRAME) + 1) * 20);
        assert_eq!(read_to_end(&wire, key(3, 2)).expect("opens"), data);
    }

    /// A reader that hands out at most `most` bytes a call, as a socket may.
    struct Trickle<'a> {
        data: &'a [u8],
        most: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.most).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn short_reads_from_the_socket_change_nothing() {
        let data: Vec<u8> = (0..(MAX_FRAME - 5000) as u32).map(|i| (i % 253) as u8).collect();
        let wire = seal_all(key(5, 1), &[&data]);
        for most in [1usize, 3, 1000, 300_000] {
            let mut out = Vec::new();
            SealedReader::new(Trickle { data: &wire, most }, key(5, 1))
                .read_to_end(&mut out)
                .expect("opens");
            assert_eq!(out, data, "socket reads of at most {most} bytes");
        }
    }

    #[test]
    fn after_an_error_no_read_hands_out_anything() {
        // A frame cut short while it went to the small-read buffer, and a tampered one: later
        // reads fail and hand out none of the frame.
        let data = vec![0x5au8; 5000];
        let wire = seal_all(key(7, 1), &[&data]);
        let mut tampered = wire.clone();
        tampered[4 + 100] ^= 1;
        for (what, wire) in [("cut short", &wire[..3000]), ("tampered", &tampered[..])] {
            let mut reader = SealedReader::new(wire, key(7, 1));
            let mut small = [0u8; 16];
            assert!(reader.read(&mut small).is_err(), "{what}: the first read");
            assert!(reader.read(&mut small).is_err(), "{what}: a later read");
            assert!(!small.contains(&0x5a), "{what}: plaintext handed out");
        }
    }

    #[test]
    fn a_frame_that_fails_leaves_no_plaintext_in_the_callers_buffer() {
        let data = vec![0x5au8; 5000];
        let mut wire = seal_all(key(6, 1), &[&data]);
        wire[4 + 4999] ^= 1; // the frame's last ciphertext byte
        let mut buf = vec![0u8; 8000];
        let err = SealedReader::new(wire.as_slice(), key(6, 1)).read(&mut buf).expect_err("bad");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(!buf.contains(&0x5a), "plaintext left in the buffer");
    }

    #[test]
    fn ciphertext_hides_the_plaintext_and_differs_per_key() {
        let data = vec![0u8; 4096];
        let a = seal_all(key(1, 1), &[&data]);
        let b = seal_all(key(1, 2), &[&data]);
        assert!(!a.windows(64).any(|w| w.iter().all(|&x| x == 0)), "zeros show through");
        assert_ne!(a, b);
    }

    fn read_to_end(wire: &[u8], key: ObjectKey) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        SealedReader::new(wire, key).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn refuses_every_tampering() {
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let good = key(9, 5);
        // Three frames of 1,000 bytes (1,020 on the wire each), then the empty last one (20).
        let whole = seal_all(good, &[&data[..1000], &data[1000..2000], &data[2000..]]);
        let frames: Vec<Vec<u8>> =
            [0, 1020, 2040, 3060, 3080].windows(2).map(|w| whole[w[0]..w[1]].to_vec()).collect();
        let wire: Vec<u8> = frames.concat();
        assert_eq!(read_to_end(&wire, key(9, 5)).expect("intact"), data);

        // Any flipped bit in a frame (header, ciphertext or tag) fails.
        for at in [0, 3, 4, 500, 1003, 1023, 1024, 2100, 3060, 3063, wire.len() - 1] {
            let mut bad = wire.clone();
            bad[at] ^= 0x10;
            assert!(read_to_end(&bad, key(9, 5)).is_err(), "bit flipped at {at}");
        }
        // The wrong key, or the right key for another object.
        let err = read_to_end(&wire, key(9, 6)).expect_err("wrong key");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("frame 0 of object 9"), "{err}");
        assert!(read_to_end(&wire, key(10, 5)).is_err(), "another object's id");
        // Frames reordered, dropped, or the stream cut short.
        let swapped =
            [&frames[1], &frames[0], &frames[2], &frames[3]].map(|f| f.as_slice()).concat();
        assert!(read_to_end(&swapped, key(9, 5)).is_err(), "reordered");
        let dropped = [&frames[0], &frames[2], &frames[3]].map(|f| f.as_slice()).concat();
        assert!(read_to_end(&dropped, key(9, 5)).is_err(), "a frame dropped");
        let cut = &wire[..wire.len() - frames[3].len()];
        assert!(read_to_end(cut, key(9, 5)).is_err(), "the last frame missing");
        // A frame marked last that was not: flipping the flag breaks its tag.
        let mut early_end = wire.clone();
        early_end[3] |= 0x80;
        assert!(read_to_end(&early_end, key(9, 5)).is_err(), "marked last");
    }

    #[test]
    fn refuses_an_oversized_length_before_reading_it() {
        let word = (MAX_FRAME as u32 + 1).to_le_bytes();
        let err = read_to_end(&word, key(1, 1)).expect_err("too long");
        assert!(err.to_string().contains("at most"), "{err}");
    }

    #[test]
    fn an_offer_carries_the_key_and_id() {
        let sent = ObjectKey::generate(77).expect("random");
        let offer = sent.offer();
        let received = ObjectKey::from_offer(&offer);
        assert_eq!(received.id(), 77);
        let wire = seal_all(sent, &[b"weights"]);
        assert_eq!(read_to_end(&wire, received).expect("opens"), b"weights");
        let other = ObjectKey::generate(77).expect("random");
        assert_ne!(other.offer(), offer, "keys are drawn afresh");
    }

    #[test]
    fn debug_output_holds_no_key() {
        let k = key(4, 0xab);
        let shown = format!("{k:?} {:?}", SealedReader::new(&[][..], key(4, 0xab)));
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab, "), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
