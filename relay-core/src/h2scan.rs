//! Counting the HTTP/2 frames that cost a server work but carry no request — PING and
//! SETTINGS (each wants an ACK), RST_STREAM, PRIORITY, and empty DATA frames without
//! END_STREAM — in the bytes a client sends, so a listener can close a connection that
//! floods them (CVE-2019-9512, -9515, -9518 and rapid reset's cousins). The HTTP/2 library
//! answers each of them correctly; what it does not do is stop a client that sends millions.
//!
//! [`FrameScanner`] follows frame boundaries across reads of any size (sans-IO).

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types and flags (RFC 9113 section 6).
pub mod frame {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    /// On SETTINGS and PING.
    pub const ACK: u8 = 0x1;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

use frame::{ACK, DATA, END_STREAM, PING, PRIORITY, RST_STREAM, SETTINGS};

/// Follows the frames of one client connection (see the module documentation).
#[derive(Debug, Clone)]
pub struct FrameScanner {
    preface_left: usize,
    header: [u8; 9],
    header_len: usize,
    payload_left: usize,
}

impl Default for FrameScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameScanner {
    pub fn new() -> Self {
        Self {
            preface_left: PREFACE.len(),
            header: [0; 9],
            header_len: 0,
            payload_left: 0,
        }
    }

    /// Takes the next bytes the client sent; returns how many control frames began in them.
    pub fn feed(&mut self, mut data: &[u8]) -> u32 {
        let skip = self.preface_left.min(data.len());
        self.preface_left -= skip;
        data = &data[skip..];
        let mut control = 0;
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(data.len());
                self.payload_left -= n;
                data = &data[n..];
                continue;
            }
            let n = (9 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 9 {
                self.header_len = 0;
                let len = u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]) as usize;
                self.payload_left = len;
                if is_control(self.header[3], self.header[4], len) {
                    control += 1;
                }
            }
        }
        control
    }
}

fn is_control(kind: u8, flags: u8, len: usize) -> bool {
    match kind {
        PING | SETTINGS => flags & ACK == 0,
        RST_STREAM | PRIORITY => true,
        DATA => len == 0 && flags & END_STREAM == 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags, 0, 0, 0, 1]);
        f.extend_from_slice(payload);
        f
    }

    fn sample() -> (Vec<u8>, u32) {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100])); // counts
        bytes.extend(frame(SETTINGS, ACK, &[])); // an ACK: no
        bytes.extend(frame(0x1, 0x5, &[0x82; 40])); // HEADERS: no
        bytes.extend(frame(DATA, 0, &[7; 300])); // DATA with bytes: no
        bytes.extend(frame(DATA, 0, &[])); // empty DATA: counts
        bytes.extend(frame(DATA, END_STREAM, &[])); // empty DATA ending a stream: no
        bytes.extend(frame(PING, 0, &[1; 8])); // counts
        bytes.extend(frame(PING, ACK, &[1; 8])); // no
        bytes.extend(frame(RST_STREAM, 0, &[0, 0, 0, 8])); // counts
        bytes.extend(frame(PRIORITY, 0, &[0; 5])); // counts
        bytes.extend(frame(0x8, 0, &[0, 0, 1, 0])); // WINDOW_UPDATE: no
        (bytes, 5)
    }

    #[test]
    fn counts_the_control_frames_of_a_whole_stream() {
        let (bytes, expected) = sample();
        assert_eq!(FrameScanner::new().feed(&bytes), expected);
    }

    #[test]
    fn a_frame_header_that_looks_like_a_ping_inside_a_payload_is_not_counted() {
        let fake_ping = frame(PING, 0, &[0; 8]);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(DATA, 0, &fake_ping.repeat(10)));
        assert_eq!(FrameScanner::new().feed(&bytes), 0);
    }

    proptest! {
        /// However the bytes are cut into reads, the count is the same.
        #[test]
        fn any_split_counts_the_same(cuts in proptest::collection::vec(0usize..600, 0..40)) {
            let (bytes, expected) = sample();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut s = FrameScanner::new();
            let mut total = 0;
            let mut at = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                total += s.feed(&bytes[at..c.max(at)]);
                at = c.max(at);
            }
            prop_assert_eq!(total, expected);
        }

        /// Arbitrary bytes never panic the scanner.
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = FrameScanner::new().feed(&data);
        }
    }
}
