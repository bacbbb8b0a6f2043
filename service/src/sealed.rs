//! Sealed frames: a large object (a policy version) cut into frames, each sealed with
//! AEGIS-128X2 (an AEAD of the CFRG's AEGIS family, `aegis` crate) under a key made for that
//! object alone. The learner's raw weights port speaks
//! this under TLS (docs/security.md): TLS authenticates both ends and carries the object's
//! key, then the sealed frames follow on the same TCP connection outside TLS. Every actor then
//! reads the same ciphertext, so a version is encrypted once however many actors fetch it,
//! and a reader decrypts each frame in the buffer it lands in (no copy beyond the kernel's).
//!
//! What it is not: a handshake or a key exchange (TLS does both; a key never travels outside
//! it), nor a stream cipher for small messages (every frame costs a 20-byte header and tag).
//!
//! A frame on the wire: a little-endian u32 whose low 31 bits are the plaintext's length and
//! whose top bit marks the object's last frame, the ciphertext (as long as the plaintext), and
//! the 16-byte tag. Frame `i` is sealed with the nonce `i` (128-bit big-endian) and, as
//! associated data, a domain label, the object's id and `i` and the length word, so that a
//! frame that is altered, dropped, reordered, cut short, moved to another object or marked
//! last when it was not fails to open.
//!
//! Why AEGIS-128X2 and not TLS's AES-128-GCM: on this project's machines it seals and opens
//! gigabytes about 2.5 times as fast (BENCHMARKS.md), and every actor opens every byte of
//! every version. It needs AES instructions (AES-NI, or the ARMv8 crypto extensions) to be
//! fast; the key and nonce are TLS-grade (128-bit key, a key per object, nonces never
//! repeated under a key).

use std::io::Read;

use aegis::aegis128x2::Aegis128X2;
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
const LABEL: &[u8; 18] = b"paretopo-sealed-v1";

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

    /// Frame `index` of the object, holding `plaintext`, ready to write.
    pub fn seal(&self, index: u64, last: bool, plaintext: &[u8]) -> Vec<u8> {
        self.seal_into(index, last, plaintext, Vec::new())
    }

    /// [`ObjectKey::seal`] into `frame`'s memory (its contents are dropped): a buffer of an
    /// earlier object, whose pages are already there.
    pub fn seal_into(
        &self,
        index: u64,
        last: bool,
        plaintext: &[u8],
        mut frame: Vec<u8>,
    ) -> Vec<u8> {
        assert!(plaintext.len() <= MAX_FRAME, "a frame of {} bytes", plaintext.len());
        let word = plaintext.len() as u32 | if last { LAST } else { 0 };
        // A buffer of the right length already is not written twice.
        frame.resize(4 + plaintext.len() + TAG_LEN, 0);
        let (header, rest) = frame.split_at_mut(4);
        let (ciphertext, tag) = rest.split_at_mut(plaintext.len());
        header.copy_from_slice(&word.to_le_bytes());
        let mut encryptor = self.cipher(index).encryptor(&self.aad(index, word));
        encryptor.update(plaintext, ciphertext);
        tag.copy_from_slice(&encryptor.finalize());
        frame
    }

    fn open(&self, index: u64, word: u32, in_out: &mut [u8], tag: [u8; TAG_LEN]) -> bool {
        self.cipher(index).decrypt_in_place(in_out, &tag, &self.aad(index, word)).is_ok()
    }

    fn cipher(&self, index: u64) -> Aegis128X2<TAG_LEN> {
        let mut nonce = [0u8; 16];
        nonce[8..].copy_from_slice(&index.to_be_bytes());
        Aegis128X2::new(&self.bytes, &nonce)
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

/// Reads the plaintext of an object's sealed frames from `inner`. A read that can hold a whole
/// frame gets it decrypted in place in the caller's buffer; smaller reads go through a buffer
/// of one frame. A frame that fails to open is an `InvalidData` error (the caller's buffer
/// then holds no plaintext of it); after the last frame, reads return 0.
pub struct SealedReader<R> {
    inner: R,
    key: ObjectKey,
    next: u64,
    pending: Vec<u8>,
    consumed: usize,
    finished: bool,
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
        Self { inner, key, next: 0, pending: Vec::new(), consumed: 0, finished: false }
    }

    /// Reads the next frame's plaintext into `buf` (which is at least as long) or, when `buf`
    /// is too short, into the pending buffer; returns its length and whether it went to `buf`.
    fn next_frame(&mut self, buf: &mut [u8]) -> std::io::Result<(usize, bool)> {
        let mut word = [0u8; 4];
        self.inner.read_exact(&mut word)?;
        let word = u32::from_le_bytes(word);
        let len = (word & !LAST) as usize;
        if len > MAX_FRAME {
            return Err(invalid(format!("a sealed frame of {len} bytes (at most {MAX_FRAME})")));
        }
        let direct = buf.len() >= len;
        let target = if direct {
            &mut buf[..len]
        } else {
            self.pending.resize(len, 0);
            self.consumed = 0;
            &mut self.pending[..]
        };
        self.inner.read_exact(target)?;
        let mut tag = [0u8; TAG_LEN];
        self.inner.read_exact(&mut tag)?;
        let index = self.next;
        if !self.key.open(index, word, target, tag) {
            target.fill(0);
            return Err(invalid(format!(
                "sealed frame {index} of object {} failed authentication",
                self.key.id
            )));
        }
        self.next += 1;
        self.finished = word & LAST != 0;
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
            let (len, direct) = self.next_frame(buf)?;
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

    /// Seals `pieces` as one object's frames, the last one marked.
    fn seal_all(key: &ObjectKey, pieces: &[&[u8]]) -> Vec<u8> {
        let mut wire = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            wire.extend(key.seal(i as u64, i + 1 == pieces.len(), piece));
        }
        wire
    }

    fn key(id: u64, byte: u8) -> ObjectKey {
        ObjectKey::from_bytes(id, [byte; KEY_LEN])
    }

    #[test]
    fn reads_back_what_was_sealed_whatever_the_read_sizes() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let pieces: Vec<&[u8]> =
            vec![&data[..10], &data[10..10], &data[10..70_000], &data[70_000..]];
        let wire = seal_all(&key(3, 1), &pieces);
        assert_eq!(wire.len(), data.len() + 4 * 20, "ciphertext as long as the plaintext");
        for read_size in [1usize, 7, 4096, 65_536, 1 << 20] {
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
    }

    #[test]
    fn ciphertext_hides_the_plaintext_and_differs_per_key() {
        let data = vec![0u8; 4096];
        let a = key(1, 1).seal(0, true, &data);
        let b = key(1, 2).seal(0, true, &data);
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
        let frames: Vec<Vec<u8>> = vec![
            good.seal(0, false, &data[..1000]),
            good.seal(1, false, &data[1000..2000]),
            good.seal(2, true, &data[2000..]),
        ];
        let wire: Vec<u8> = frames.concat();
        assert_eq!(read_to_end(&wire, key(9, 5)).expect("intact"), data);

        // Any flipped bit in a frame (header, ciphertext or tag) fails.
        for at in [0, 3, 4, 500, 1003, 1023, 1024, 2100, wire.len() - 1] {
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
        let swapped = [frames[1].clone(), frames[0].clone(), frames[2].clone()].concat();
        assert!(read_to_end(&swapped, key(9, 5)).is_err(), "reordered");
        let dropped = [frames[0].clone(), frames[2].clone()].concat();
        assert!(read_to_end(&dropped, key(9, 5)).is_err(), "a frame dropped");
        let cut = &wire[..wire.len() - frames[2].len()];
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
        let received = ObjectKey::from_offer(&sent.offer());
        assert_eq!(received.id(), 77);
        let wire = sent.seal(0, true, b"weights");
        assert_eq!(read_to_end(&wire, received).expect("opens"), b"weights");
        let other = ObjectKey::generate(77).expect("random");
        assert_ne!(other.offer(), sent.offer(), "keys are drawn afresh");
    }

    #[test]
    fn debug_output_holds_no_key() {
        let k = key(4, 0xab);
        let shown = format!("{k:?} {:?}", SealedReader::new(&[][..], key(4, 0xab)));
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab, "), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
